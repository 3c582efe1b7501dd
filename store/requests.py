"""Accepted requests, recorded durably before the API answers 202.

requests/{job_id}.json holds what is needed to enqueue the job again (the task
arguments) until the job has ended and the retention time has passed. The arguments that
carry request text (TEXT_ARGS) are stored sealed under the request's own data key
(store.datakeys); `purge` destroys that key (shredding every copy of the ciphertext) and
drops the arguments, keeping only salted hashes. The reconciler
re-enqueues accepted requests whose queue entry is gone, and delivers callbacks (their
state lives here too). idempotency/{hash}.json maps an Idempotency-Key (hashed
with the caller's key id) to the job it created and the salted hash of the body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from store.backends.base import ObjectBackend
from store.datakeys import DataKeys, KeyDestroyed, is_sealed
from store.documents import JOB_ID_RE, utc_now
from store.errors import CorruptDocument, NotFound
from store.objects import dump, load, read_doc, update_doc

TaskArgs = list[Any]
"""A job's task arguments after its id (plain JSON)."""

FROM_REQUEST = "@stored-request"
"""Placeholder sent through the queue instead of request text: the worker reads the text
from the stored request, so Redis (and its append-only file) never holds it."""

STRIPE_DIGITS = 2
"""Hex digits of an idempotency key's hash that pick its lock: 16**2 = 256 stripes."""

TEXT_ARGS = {"forget": (2,), "verify": (2, 3)}
"""Positions, in a kind's task arguments after the job id, that carry request text."""


def _context(position: int) -> str:
    """Where a sealed argument belongs (part of its associated data)."""
    return f"task-arg/{position}"


def queue_args(kind: str, task_args: list[Any]) -> list[Any]:
    """The task arguments to enqueue: text replaced by FROM_REQUEST."""
    out = list(task_args)
    for index in TEXT_ARGS.get(kind, ()):
        out[index] = FROM_REQUEST
    return out


class RequestPurged(NotFound):
    """The request's text was purged (its retention passed) or never stored."""


class RequestStore:
    """Pending requests are requests/{job_id}.json; settled ones requests/settled/."""

    def __init__(self, backend: ObjectBackend, data_keys: DataKeys) -> None:
        self.backend = backend
        self.data_keys = data_keys

    @staticmethod
    def _key(job_id: str, settled: bool = False) -> str:
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise NotFound(f"request {job_id!r} not found", kind="request")
        return f"requests/{'settled/' if settled else ''}{job_id}.json"

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store an accepted request (durably); doc must hold job_id, kind, task_args.
        The text arguments are sealed under a new data key of the request first."""
        doc = {**doc, "task_args": self._sealed_args(doc["job_id"], doc.get("kind"),
                                                     doc.get("task_args"))}
        full = {
            "created_at": utc_now(),
            "callback": None,
            "purged_at": None,
            "enqueued": 1,
            "record_hashes": [],
            **doc,
        }
        self.backend.put(self._key(full["job_id"]), dump(full))  # requests/: owner only
        return full

    def get(self, job_id: str) -> dict[str, Any]:
        for settled in (False, True):
            blob = self.backend.read(self._key(job_id, settled))
            if blob is not None:
                return load(blob.data, f"{job_id}.json")
        raise NotFound(f"request {job_id!r} not found", kind="request")

    def settle(self, job_id: str) -> None:
        """Move a request with nothing left to do (purged, callback done) out of the
        reconciler's way: `list` no longer returns it, `get` still finds it."""
        self.backend.move(self._key(job_id), self._key(job_id, settled=True))

    def find(self, job_id: str) -> dict[str, Any] | None:
        with contextlib.suppress(NotFound):
            return self.get(job_id)
        return None

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Atomic read-modify-write of a request that is not settled."""
        missing = NotFound(f"request {job_id!r} is not pending", kind="request")
        key = self._key(job_id)
        updated = update_doc(self.backend, key, lambda doc: {**doc, **fields}, missing)
        assert updated is not None
        return updated

    def claim_callback(self, job_id: str, now: float, hold_s: float) -> dict[str, Any] | None:
        """Atomically, when the request's callback is pending and due at `now` (epoch
        seconds): move its next attempt to now + hold_s, so that no other process makes
        one meanwhile, and return the request as it was; None otherwise."""
        claimed: list[dict[str, Any]] = []

        def claim(doc: dict[str, Any]) -> dict[str, Any] | None:
            callback = doc.get("callback") or {}
            if callback.get("state") != "pending":
                return None
            if now < float(callback.get("next_attempt_at") or 0):
                return None
            claimed.append(doc)
            return {**doc, "callback": {**callback, "next_attempt_at": now + hold_s}}

        missing = NotFound(f"request {job_id!r} is not pending", kind="request")
        update_doc(self.backend, self._key(job_id), claim, missing)
        return claimed[0] if claimed else None

    def pending_ids(self) -> list[str]:
        """Job ids of the pending (not settled) requests, from one listing: no document
        is read (locally one directory scan; on S3 one LIST call per 1,000 requests, the
        settled ones folded into a single common prefix)."""
        names = self.backend.children("requests/")
        return [name[: -len(".json")] for name in names
                if name.endswith(".json") and JOB_ID_RE.match(name[: -len(".json")])]

    def read_pending(self, job_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The pending requests of these jobs (those settled or gone meanwhile, or
        unreadable, left out), oldest first."""
        docs = []
        for job_id in job_ids:
            with contextlib.suppress(NotFound, CorruptDocument):
                missing = NotFound(f"request {job_id} is gone", kind="request")
                docs.append(read_doc(self.backend, self._key(job_id), missing))
        return sorted(docs, key=lambda d: (d.get("created_at") or "", d["job_id"]))

    def list(self) -> list[dict[str, Any]]:
        """Every pending request, oldest first (reads them all)."""
        return self.read_pending(self.pending_ids())

    def _sealed_args(self, job_id: str, kind: Any, args: Any) -> Any:
        if not isinstance(args, list):
            return args
        out = list(args)
        for index in TEXT_ARGS.get(str(kind), ()):
            if index < len(out) and not is_sealed(out[index]):
                out[index] = self.data_keys.seal(job_id, _context(index), out[index])
        return out

    def open_args(self, doc: dict[str, Any]) -> TaskArgs | None:
        """A stored request's task arguments with their text opened; None once purged
        (arguments dropped, or the data key destroyed)."""
        args = doc.get("task_args")
        if not isinstance(args, list):
            return None
        out = list(args)
        try:
            for index, value in enumerate(out):
                if is_sealed(value):
                    out[index] = self.data_keys.unseal(doc["job_id"], _context(index), value)
        except KeyDestroyed:
            return None
        return out

    def task_text(self, job_id: str, position: int) -> Any:
        """The stored task argument at `position` (after the job id) of a request,
        opened."""
        try:
            args = self.open_args(self.get(job_id))
        except NotFound:
            args = None
        if args is None:
            raise RequestPurged(
                f"the text of request {job_id} is no longer stored (purged after its "
                "retention time); submit it again", kind="request",
            )
        return args[position]

    def purge(self, job_id: str) -> dict[str, Any]:
        """Shred the request's data key, then drop the task arguments (the sealed
        text); keep ids and salted hashes."""
        self.data_keys.destroy(job_id)
        return self.update(job_id, task_args=None, purged_at=utc_now())

    # ------------------------------------------------------------ idempotency
    @contextlib.contextmanager
    def idempotency(self, key_hash: str) -> Iterator[dict[str, Any] | None]:
        """Hold the key's lock; yield its stored entry (None when new).

        The lock is one of 256 stripes, picked by the hash's first digits (STRIPE_DIGITS): one
        key always maps to the same stripe (so two requests with one key are serialised
        as before), and a stripe's lock file is made once, not once per key (a new file
        per submission cost as much as a document write). Two different keys share a
        stripe 1 time in 256, and then only wait for each other.
        """
        key = f"idempotency/{key_hash}.json"
        with self.backend.lock(f"idempotency/stripes/{key_hash[:STRIPE_DIGITS]}"):
            blob = self.backend.read(key)
            yield load(blob.data, key) if blob is not None else None

    def remember_idempotency(self, key_hash: str, job_id: str, body_hash: str) -> None:
        """Record which job a key created; call inside `idempotency(key_hash)`."""
        doc = {"job_id": job_id, "body_hash": body_hash, "created_at": utc_now()}
        self.backend.put(f"idempotency/{key_hash}.json", dump(doc))
