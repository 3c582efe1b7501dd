"""The object-backend interface: what the store needs from where its bytes live.

Keys are "/"-separated relative paths ("models/m-0123456789ab/model.json"); no key
component starts with "." (those names are the backends' own: temp files, locks).
Every write is all-or-nothing: a reader sees the old object or the new one, never a
torn one. Versions of an object are told apart by an opaque token (an S3 ETag, a
content hash locally) that conditional writes compare.

Two conditional writes make every multi-writer structure of the store possible:
`put_if_absent` (claim a name: a version number, an audit sequence number) and
`put_if_match` (compare-and-swap: job transitions, model updates). `update` is the
read-modify-write loop built on them; `lock` a lease for the rare critical section
that spans several objects (the idempotency check).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
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

    def child_stamps(self, prefix: str) -> dict[str, str | None]:
        """Immediate child objects of the "directory" prefix -> a cheap change stamp of
        each, from one listing and no read: a different stamp means the object changed
        (read it again); None means unknown (read it to know). This default knows none."""
        return {name: None for name in self.children(prefix) if not name.endswith("/")}

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

    @contextlib.contextmanager
    def lock(self, key: str, ttl_s: float = 60.0) -> Iterator[None]:
        """Hold the lock of object `key` for the block (other holders wait): a lease
        object "locks/<key>".

        A lease whose holder died is taken over once `ttl_s` has passed since it was
        taken (wall clocks of the machines must roughly agree); so a block must finish
        well within ttl_s.
        """
        owner = f"{os.getpid()}-{uuid.uuid4().hex}"
        attempt = 0
        while not self._take_lease(key, owner, ttl_s):
            _backoff(attempt, cap=0.2)
            attempt += 1
        try:
            yield
        finally:
            self._drop_lease(key, owner)

    @contextlib.contextmanager
    def try_lock(self, key: str, ttl_s: float = 60.0) -> Iterator[bool]:
        """Like `lock`, without waiting: yields True when this caller holds it, False
        when someone else does (e.g. one reconciler pass at a time over all machines)."""
        owner = f"{os.getpid()}-{uuid.uuid4().hex}"
        held = self._take_lease(key, owner, ttl_s)
        try:
            yield held
        finally:
            if held:
                self._drop_lease(key, owner)

    def _take_lease(self, key: str, owner: str, ttl_s: float) -> bool:
        lease = "locks/" + check_key(key)
        body = json.dumps({"owner": owner, "expires": time.time() + ttl_s}).encode()
        if self.put_if_absent(lease, body):
            return True
        current = self.read(lease)
        return (current is not None and _expired(current.data)
                and self.put_if_match(lease, body, current.token))

    def _drop_lease(self, key: str, owner: str) -> None:
        lease = "locks/" + check_key(key)
        held = self.read(lease)
        if held is not None and json.loads(held.data).get("owner") == owner:
            self.delete(lease)


def _expired(data: bytes) -> bool:
    try:
        return float(json.loads(data)["expires"]) < time.time()
    except (ValueError, KeyError, TypeError):
        return True  # unreadable lease: treat as abandoned


def _backoff(attempt: int, cap: float = 0.05) -> None:
    time.sleep(random.uniform(0, min(cap, 0.002 * (2 ** min(attempt, 10)))))
