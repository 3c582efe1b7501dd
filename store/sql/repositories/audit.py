"""The audit trail in SQL: the same hash-chained entries as store.audit (entry format
and entry_hash unchanged, so a chain verifies the same way), with seq from the database.

An append is one transaction that holds the chain's lock (PostgreSQL: an EXCLUSIVE table
lock, which readers pass; SQLite: the write lock), reads the head, inserts a row to get
its seq from the identity column, and writes the entry built on the head. Under the lock
no other writer draws a number; PostgreSQL's sequence is reset to the head first, so a
number drawn by a transaction that rolled back never leaves a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import func, insert, select, text, update

from store.audit import GENESIS, _broken, entry_hash
from store.documents import utc_now
from store.sql.engine import Database
from store.sql.repositories.common import thaw
from store.sql.schema import AuditEntry


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        actor: str | None,
        action: str,
        *,
        ids: dict[str, Any] | None = None,
        record_hashes: list[str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry (committed before returning) and return it."""
        with self.db.write() as s:
            if self.db.dialect == "postgresql":
                s.execute(text("LOCK TABLE audit IN EXCLUSIVE MODE"))
                s.execute(text("SELECT setval(pg_get_serial_sequence('audit', 'seq'), "
                               "COALESCE((SELECT max(seq) FROM audit), 0) + 1, false)"))
            head = s.scalar(select(AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1))
            seq = s.scalar(insert(AuditEntry).values(hash="", entry={})
                           .returning(AuditEntry.seq))
            entry: dict[str, Any] = {
                "seq": seq, "time": utc_now(), "actor": actor or "system", "action": action,
                "ids": {k: v for k, v in (ids or {}).items() if v is not None},
                "record_hashes": list(record_hashes or []), "detail": detail or {},
                "prev": head if head is not None else GENESIS,
            }
            entry["hash"] = entry_hash(entry)
            s.execute(update(AuditEntry).where(AuditEntry.seq == seq)
                      .values(hash=entry["hash"], entry=entry))
        return entry

    def page(self, after: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """Entries with seq > after, at most `limit`; and the `after` of the next page."""
        with self.db.read() as s:
            rows = list(s.scalars(select(AuditEntry.entry).where(AuditEntry.seq > after)
                                  .order_by(AuditEntry.seq).limit(limit + 1)))
        items = [thaw(e) for e in rows[:limit]]
        return items, (items[-1]["seq"] if len(rows) > limit and items else None)

    def head(self) -> dict[str, Any] | None:
        """The last entry (None for an empty trail)."""
        with self.db.read() as s:
            entry = s.scalar(select(AuditEntry.entry).order_by(AuditEntry.seq.desc()).limit(1))
        return thaw(entry) if entry is not None else None

    def entry(self, seq: int) -> dict[str, Any] | None:
        """The entry numbered `seq` (None when there is none)."""
        with self.db.read() as s:
            entry = s.scalar(select(AuditEntry.entry).where(AuditEntry.seq == seq))
        return thaw(entry) if entry is not None else None

    def entries(self, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every entry in order, read a page of `batch` at a time."""
        after = 0
        while True:
            items, _ = self.page(after, batch)
            yield from items
            if len(items) < batch:
                return
            after = items[-1]["seq"]

    def find(
        self, match: Callable[[dict[str, Any]], bool], hint: bytes = b""
    ) -> dict[str, Any] | None:
        """The first entry `match` accepts (a scan: only for rare look-ups; `hint` is
        kept for the callers of the document store and ignored)."""
        return next((e for e in self.entries() if match(e)), None)

    def count(self) -> int:
        with self.db.read() as s:
            return int(s.scalar(select(func.count()).select_from(AuditEntry)) or 0)

    def verify(self, batch: int = 1000) -> dict[str, Any]:
        """Check every entry's hash, seq and link (as store.audit's verify does); the
        first broken entry is reported. Reads the trail in pages of `batch`."""
        prev, count, expected_seq, after = GENESIS, 0, 1, 0
        while True:
            with self.db.read() as s:
                rows = list(s.execute(select(AuditEntry.seq, AuditEntry.hash, AuditEntry.entry)
                                      .where(AuditEntry.seq > after)
                                      .order_by(AuditEntry.seq).limit(batch)))
            if not rows:
                break
            for seq, stored_hash, entry in rows:
                number = count + 1
                if not isinstance(entry, dict) or entry.get("seq") != expected_seq \
                        or seq != expected_seq:
                    return _broken(count, number, "sequence number out of order")
                if entry.get("prev") != prev:
                    return _broken(count, number,
                                   "prev does not match the previous entry's hash")
                if entry.get("hash") != entry_hash(entry) or stored_hash != entry["hash"]:
                    return _broken(count, number, "hash does not match the entry's content")
                prev, count, expected_seq = entry["hash"], count + 1, expected_seq + 1
            after = rows[-1][0]
        return {"valid": True, "entries": count, "head": prev, "broken_at": None,
                "reason": None}
