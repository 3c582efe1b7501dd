"""The audit trail: an append-only, hash-chained JSON-lines file, <root>/audit/log.jsonl.

Each entry holds `seq`, `time`, `actor` (an API key id, "worker:<name>" or "system"),
`action`, `ids` (model, job, version, key...), `record_hashes` (salted, never text),
`detail`, `prev` (the previous entry's hash) and `hash` = sha256 of the canonical JSON of
everything else. Changing, removing or reordering an entry breaks the chain, which
`verify` reports. Appends hold an flock, so API and worker processes interleave safely.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from store.documents import utc_now
from store.files import fsync_dir, locked
from store.hashing import canonical_json, sha256_hex

GENESIS = "0" * 64
"""`prev` of the first entry."""


def entry_hash(entry: dict[str, Any]) -> str:
    return sha256_hex(canonical_json({k: v for k, v in entry.items() if k != "hash"}))


class AuditLog:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "audit"
        self.path = self.dir / "log.jsonl"

    def append(
        self,
        actor: str | None,
        action: str,
        *,
        ids: dict[str, Any] | None = None,
        record_hashes: list[str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry (fsynced before returning) and return it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with locked(self.dir / ".lock"):
            last = self._last_entry()
            entry: dict[str, Any] = {
                "seq": (last["seq"] + 1) if last else 1,
                "time": utc_now(),
                "actor": actor or "system",
                "action": action,
                "ids": {k: v for k, v in (ids or {}).items() if v is not None},
                "record_hashes": list(record_hashes or []),
                "detail": detail or {},
                "prev": last["hash"] if last else GENESIS,
            }
            entry["hash"] = entry_hash(entry)
            new = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, canonical_json(entry) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.dir)
        return entry

    def _last_entry(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                end = fh.tell()
                pos, tail = end, b""
                while pos > 0 and tail.count(b"\n") < 2:
                    step = min(4096, pos)
                    pos -= step
                    fh.seek(pos)
                    tail = fh.read(step) + tail
        except FileNotFoundError:
            return None
        lines = [line for line in tail.split(b"\n") if line.strip()]
        return json.loads(lines[-1]) if lines else None

    def _lines(self) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as fh:
                yield from (line for line in fh if line.strip())
        except FileNotFoundError:
            return

    def page(self, after: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """Entries with seq > after, at most `limit`; and the `after` of the next page."""
        items: list[dict[str, Any]] = []
        more = False
        for line in self._lines():
            entry = json.loads(line)
            if entry.get("seq", 0) <= after:
                continue
            if len(items) == limit:
                more = True
                break
            items.append(entry)
        return items, (items[-1]["seq"] if more and items else None)

    def verify(self) -> dict[str, Any]:
        """Check every entry's hash and link; the first broken entry is reported."""
        prev, count, expected_seq = GENESIS, 0, 1
        for number, line in enumerate(self._lines(), start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                return _broken(count, number, "not valid JSON")
            if not isinstance(entry, dict) or entry.get("seq") != expected_seq:
                return _broken(count, number, "sequence number out of order")
            if entry.get("prev") != prev:
                return _broken(count, number, "prev does not match the previous entry's hash")
            if entry.get("hash") != entry_hash(entry):
                return _broken(count, number, "hash does not match the entry's content")
            prev, count, expected_seq = entry["hash"], count + 1, expected_seq + 1
        return {"valid": True, "entries": count, "head": prev, "broken_at": None, "reason": None}


def _broken(count: int, seq: int, reason: str) -> dict[str, Any]:
    return {"valid": False, "entries": count, "head": None, "broken_at": seq, "reason": reason}
