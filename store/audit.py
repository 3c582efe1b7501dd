"""The audit trail: an append-only, hash-chained list of entries.

Locally it is one JSON-lines file, <root>/audit/log.jsonl, appended under an flock. On
an object store it is one object per entry, audit/entries/{seq:012d}.json, each created
with put_if_absent: of two writers that built entry N from entry N-1, one wins and the
other re-reads entry N and retries as N+1, so the chain never forks (every process on
every machine appends to the same chain).

Each entry holds `seq`, `time`, `actor` (an API key id, "worker:<name>" or "system"),
`action`, `ids` (model, job, version, key...), `record_hashes` (salted, never text),
`detail`, `prev` (the previous entry's hash) and `hash` = sha256 of the canonical JSON of
everything else. Changing, removing or reordering an entry breaks the chain, which
`verify` reports.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from store.backends.base import ObjectBackend
from store.backends.local import LocalBackend
from store.documents import utc_now
from store.errors import Conflict
from store.files import fsync_dir, locked
from store.hashing import canonical_json, sha256_hex

Build = Callable[[dict[str, Any] | None], dict[str, Any]]
ENTRIES = "audit/entries/"
MAX_APPEND_ATTEMPTS = 10_000

GENESIS = "0" * 64
"""`prev` of the first entry."""


def entry_hash(entry: dict[str, Any]) -> str:
    return sha256_hex(canonical_json({k: v for k, v in entry.items() if k != "hash"}))


class FileChain:
    """The chain as one JSON-lines file (the local backend)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "log.jsonl"

    def append(self, build: Build) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with locked(self.dir / ".lock"):
            entry = build(self._last_entry())
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

    def lines(self) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as fh:
                yield from (line for line in fh if line.strip())
        except FileNotFoundError:
            return


class ObjectChain:
    """The chain as one object per entry (object stores: no append, but put_if_absent)."""

    def __init__(self, backend: ObjectBackend) -> None:
        self.backend = backend
        self._guard = threading.Lock()
        self._head: dict[str, Any] | None = None  # last entry this process saw

    @staticmethod
    def _key(seq: int) -> str:
        return f"{ENTRIES}{seq:012d}.json"

    def _find_head(self) -> dict[str, Any] | None:
        keys = self.backend.list_keys(ENTRIES)
        if not keys:
            return None
        blob = self.backend.read(keys[-1])
        return json.loads(blob.data) if blob is not None else None

    def append(self, build: Build) -> dict[str, Any]:
        with self._guard:
            last = self._head if self._head is not None else self._find_head()
            for _ in range(MAX_APPEND_ATTEMPTS):
                entry = build(last)
                if self.backend.put_if_absent(self._key(entry["seq"]), canonical_json(entry)):
                    self._head = entry
                    return entry
                taken = self.backend.read(self._key(entry["seq"]))  # another writer's
                last = json.loads(taken.data) if taken is not None else self._find_head()
            raise Conflict("could not append to the audit trail (too much contention)")

    def lines(self) -> Iterator[bytes]:
        for key in self.backend.list_keys(ENTRIES):
            blob = self.backend.read(key)
            if blob is not None:
                yield blob.data


class AuditLog:
    def __init__(self, backend: ObjectBackend) -> None:
        self._chain: FileChain | ObjectChain
        if isinstance(backend, LocalBackend):
            self._chain = FileChain(backend.root / "audit")
            self.dir: Path | None = self._chain.dir
            self.path: Path | None = self._chain.path
        else:
            self._chain = ObjectChain(backend)
            self.dir = self.path = None

    def append(
        self,
        actor: str | None,
        action: str,
        *,
        ids: dict[str, Any] | None = None,
        record_hashes: list[str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry (durably, before returning) and return it."""

        def build(last: dict[str, Any] | None) -> dict[str, Any]:
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
            return entry

        return self._chain.append(build)

    def _lines(self) -> Iterator[bytes]:
        return self._chain.lines()

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

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry as stored, in order (a line that is not JSON: an empty dict)."""
        for line in self._lines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {}
            yield entry if isinstance(entry, dict) else {}

    def head(self) -> dict[str, Any] | None:
        """The last entry (None for an empty trail)."""
        if isinstance(self._chain, FileChain):
            return self._chain._last_entry()
        return self._chain._find_head()

    def entry(self, seq: int) -> dict[str, Any] | None:
        """The entry numbered `seq` as stored now (None when there is none)."""
        if isinstance(self._chain, ObjectChain):
            blob = self._chain.backend.read(ObjectChain._key(seq))
            return json.loads(blob.data) if blob is not None else None
        return self.find(lambda e: e.get("seq") == seq, f'"seq":{seq},'.encode())

    def find(
        self, match: Callable[[dict[str, Any]], bool], hint: bytes = b""
    ) -> dict[str, Any] | None:
        """The first entry `match` accepts; `hint`: bytes every such line contains (a
        cheap filter before parsing)."""
        for line in self._lines():
            if hint in line:
                entry = json.loads(line)
                if match(entry):
                    return entry
        return None

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
