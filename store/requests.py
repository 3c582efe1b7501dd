"""Accepted requests, recorded durably before the API answers 202.

<root>/requests/{job_id}.json holds what is needed to enqueue the job again (the task
arguments, forget text included) until the job has ended and the retention time has
passed; `purge` then drops the arguments, keeping only salted hashes. The reconciler
re-enqueues accepted requests whose queue entry is gone, and delivers callbacks (their
state lives here too). <root>/idempotency/{hash}.json maps an Idempotency-Key (hashed
with the caller's key id) to the job it created and the salted hash of the body.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from store.documents import JOB_ID_RE, utc_now
from store.errors import NotFound
from store.files import locked, read_json, write_json_atomic

FROM_REQUEST = "@stored-request"
"""Placeholder sent through the queue instead of request text: the worker reads the text
from the stored request, so Redis (and its append-only file) never holds it."""

TEXT_ARGS = {"forget": (2,), "verify": (2, 3)}
"""Positions, in a kind's task arguments after the job id, that carry request text."""


def queue_args(kind: str, task_args: list[Any]) -> list[Any]:
    """The task arguments to enqueue: text replaced by FROM_REQUEST."""
    out = list(task_args)
    for index in TEXT_ARGS.get(kind, ()):
        out[index] = FROM_REQUEST
    return out


class RequestPurged(NotFound):
    """The request's text was purged (its retention passed) or never stored."""


class RequestStore:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "requests"
        self.idem_dir = Path(root) / "idempotency"

    def _path(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise NotFound(f"request {job_id!r} not found", kind="request")
        return self.dir / f"{job_id}.json"

    def _lock(self, job_id: str) -> Path:
        return self.dir / ".locks" / f"{job_id}.lock"

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store an accepted request (fsynced); doc must hold job_id, kind, task_args."""
        full = {
            "created_at": utc_now(),
            "callback": None,
            "purged_at": None,
            "enqueued": 1,
            "record_hashes": [],
            **doc,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # request text: owner only
        with locked(self._lock(full["job_id"])):
            write_json_atomic(self._path(full["job_id"]), full)
        return full

    def get(self, job_id: str) -> dict[str, Any]:
        path = self._path(job_id)
        for candidate in (path, self.dir / "settled" / path.name):
            try:
                return read_json(candidate)
            except FileNotFoundError:
                continue
        raise NotFound(f"request {job_id!r} not found", kind="request")

    def settle(self, job_id: str) -> None:
        """Move a request with nothing left to do (purged, callback done) out of the
        reconciler's way: `list` no longer returns it, `get` still finds it."""
        path = self._path(job_id)
        with locked(self._lock(job_id)):
            (self.dir / "settled").mkdir(parents=True, exist_ok=True)
            os.replace(path, self.dir / "settled" / path.name)
        with contextlib.suppress(FileNotFoundError):
            self._lock(job_id).unlink()

    def find(self, job_id: str) -> dict[str, Any] | None:
        with contextlib.suppress(NotFound):
            return self.get(job_id)
        return None

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Locked read-modify-write of a request that is not settled."""
        with locked(self._lock(job_id)):
            try:
                doc = read_json(self._path(job_id))
            except FileNotFoundError:
                raise NotFound(f"request {job_id!r} is not pending", kind="request") from None
            doc.update(fields)
            write_json_atomic(self._path(job_id), doc)
        return doc

    def list(self) -> list[dict[str, Any]]:
        if not self.dir.is_dir():
            return []
        docs = []
        for path in self.dir.glob("j-*.json"):
            with contextlib.suppress(OSError, ValueError):
                docs.append(read_json(path))
        return sorted(docs, key=lambda d: (d.get("created_at") or "", d["job_id"]))

    def task_text(self, job_id: str, position: int) -> Any:
        """The stored task argument at `position` (after the job id) of a request."""
        try:
            args = self.get(job_id).get("task_args")
        except NotFound:
            args = None
        if args is None:
            raise RequestPurged(
                f"the text of request {job_id} is no longer stored (purged after its "
                "retention time); submit it again", kind="request",
            )
        return args[position]

    def purge(self, job_id: str) -> dict[str, Any]:
        """Drop the task arguments (the request text); keep ids and salted hashes."""
        return self.update(job_id, task_args=None, purged_at=utc_now())

    # ------------------------------------------------------------ idempotency
    @contextlib.contextmanager
    def idempotency(self, key_hash: str) -> Iterator[dict[str, Any] | None]:
        """Hold the key's lock; yield its stored entry (None when new)."""
        path = self.idem_dir / f"{key_hash}.json"
        with locked(self.idem_dir / ".locks" / f"{key_hash}.lock"):
            try:
                yield read_json(path)
            except FileNotFoundError:
                yield None

    def remember_idempotency(self, key_hash: str, job_id: str, body_hash: str) -> None:
        """Record which job a key created; call inside `idempotency(key_hash)`."""
        doc = {"job_id": job_id, "body_hash": body_hash, "created_at": utc_now()}
        write_json_atomic(self.idem_dir / f"{key_hash}.json", doc)
