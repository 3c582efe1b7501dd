"""What an insider with write access to the database could do to the audit trail:
rewrite one entry and recompute every later hash (so that the chain alone still
verifies), drop the last entries, or edit one without re-chaining; and put it back.
(The SQL successor of tests/support/audit_tamper.py, which edited audit/log.jsonl.)"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, insert, select, update

from store import ArtifactStore
from store.audit import GENESIS, entry_hash
from store.sql.schema import AuditEntry

Rows = list[tuple[int, str, dict[str, Any]]]


def snapshot(store: ArtifactStore) -> Rows:
    with store.meta.db.read() as s:
        return [(seq, h, copy.deepcopy(e)) for seq, h, e in s.execute(
            select(AuditEntry.seq, AuditEntry.hash, AuditEntry.entry).order_by(AuditEntry.seq))]


def restore(store: ArtifactStore, rows: Rows) -> None:
    """Put the trail back as `snapshot` saw it."""
    with store.meta.db.write() as s:
        s.execute(delete(AuditEntry))
        for seq, h, entry in rows:
            s.execute(insert(AuditEntry).values(seq=seq, hash=h, entry=entry))


def rewrite_entry(store: ArtifactStore, seq: int, change: Callable[[dict[str, Any]], None]
                  ) -> None:
    """Apply `change` to entry `seq`, then re-chain every entry."""
    prev = GENESIS
    with store.meta.db.write() as s:
        rows = list(s.execute(select(AuditEntry.seq, AuditEntry.entry)
                              .order_by(AuditEntry.seq)))
        for number, stored in rows:
            entry = copy.deepcopy(stored)
            if number == seq:
                change(entry)
            entry["prev"] = prev
            entry["hash"] = entry_hash(entry)
            prev = entry["hash"]
            s.execute(update(AuditEntry).where(AuditEntry.seq == number)
                      .values(hash=entry["hash"], entry=entry))


def keep_first(store: ArtifactStore, count: int) -> None:
    """Drop every entry after the first `count`."""
    with store.meta.db.write() as s:
        s.execute(delete(AuditEntry).where(AuditEntry.seq > count))


def edit_entry(store: ArtifactStore, seq: int, change: Callable[[dict[str, Any]], None]
               ) -> None:
    """Change entry `seq` in place, hash and chain left as they were."""
    with store.meta.db.write() as s:
        entry = copy.deepcopy(s.scalar(select(AuditEntry.entry)
                                       .where(AuditEntry.seq == seq)))
        change(entry)
        s.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(entry=entry))
