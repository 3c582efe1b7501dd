"""The object-backend interface: what the store needs from where its bytes live.

Keys are "/"-separated relative paths ("models/m-0123456789ab/model.json"); no key
component starts with "." (those names are the backends' own: temp files, locks).
Every write is all-or-nothing: a reader sees the old object or the new one, never a
torn one. Versions of an object are told apart by an opaque token (an S3 ETag, a
content hash locally) that conditional writes compare.

Metadata is in SQL (store.sql); blobs need little coordination: `put_if_absent`
(create once: a signed checkpoint, a secret) and `put_if_match` (compare-and-swap),
with `update`, the read-modify-write loop built on them, for the one mutable blob left
(a model's sealed retain bank). The leases and change stamps the JSON metadata
documents needed went with them.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from store.errors import Conflict, StoreError

UPDATE_ATTEMPTS = 200
"""Compare-and-swap retries before `update` gives up (each retry means another writer
won a race on the same object, so this is never reached in practice)."""


class BackendError(StoreError):
    """The backend failed for a reason that is not the caller's (I/O, network, auth)."""


class Blob(NamedTuple):
    data: bytes
    token: str  # opaque version token; pass it back to put_if_match


def check_key(key: str) -> str:
    """The key itself; ValueError for an empty, absolute or dotted-component key."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(".")
                                             for p in parts):
        raise ValueError(f"invalid store key {key!r}")
    return key


class ObjectBackend(ABC):
    """Where the store's objects live. Implementations must be safe to share between
    threads; processes (and machines) coordinate only through conditional writes."""

    kind: str = "abstract"

    # ------------------------------------------------------------ primitives
    @abstractmethod
    def read(self, key: str) -> Blob | None:
        """The object and its token; None when there is none."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) an object, durably."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write only if no object has that key; False (nothing written) otherwise."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, token: str) -> bool:
        """Write only if the object is still the version `token` names; else False."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; no error when there is none."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (recursively), sorted."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Immediate children of the "directory" prefix (which ends in "/"): object
        names as "name", sub-prefixes as "name/"; sorted."""

    @abstractmethod
    def upload_file(self, path: Path, key: str) -> None:
        """Store a (big) local file as an object."""

    @abstractmethod
    def download_file(self, key: str, path: Path) -> None:
        """Write the object to a local file, atomically (temp + rename).
        FileNotFoundError when there is no such object."""

    @abstractmethod
    def location(self, key: str) -> str:
        """Where an object (or a prefix) is, for people and other tools: a path or URL."""

    @abstractmethod
    def describe(self) -> str:
        """Where the objects live, for logs (never a credential)."""

    # --------------------------------------------------------------- derived
    def exists(self, key: str) -> bool:
        return self.read(key) is not None

    def shred(self, key: str) -> None:
        """Remove an object so that no copy of it stays with the backend (a data key:
        store.datakeys). This default is `delete`; backends that keep old versions or
        blocks override it."""
        self.delete(key)

    def move(self, key: str, new_key: str) -> None:
        """Give an object a new key (FileNotFoundError when there is none). Not atomic
        on object stores: a crash in between leaves both, which readers tolerate."""
        blob = self.read(key)
        if blob is None:
            raise FileNotFoundError(key)
        self.put(new_key, blob.data)
        self.delete(key)

    def update(
        self, key: str, change: Callable[[bytes | None], bytes | None]
    ) -> bytes | None:
        """Read-modify-write: change(current or None) returns the new bytes, or None to
        write nothing. Returns what was written (None when nothing was). `change` may
        run more than once (a lost race retries it on the newer object), so it must not
        have side effects; an exception it raises propagates and writes nothing."""
        for attempt in range(UPDATE_ATTEMPTS):
            current = self.read(key)
            new = change(current.data if current else None)
            if new is None:
                return None
            if current is None:
                won = self.put_if_absent(key, new)
            else:
                won = self.put_if_match(key, new, current.token)
            if won:
                return new
            _backoff(attempt)
        raise Conflict(f"too much contention on {key}; try again")

def _backoff(attempt: int, cap: float = 0.05) -> None:
    time.sleep(random.uniform(0, min(cap, 0.002 * (2 ** min(attempt, 10)))))
