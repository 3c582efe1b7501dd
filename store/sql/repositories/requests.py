"""Accepted requests in SQL (store.requests on documents).

A request row holds what is needed to enqueue its job again: the task arguments, their
text sealed under the request's own data key (store.datakeys) before it reaches the
database, so no page, WAL frame or dead row ever holds the text in the clear. `purge`
destroys the data key (every copy of the ciphertext stops opening) and sets the arguments
to NULL. "Settled" is a flag (the reconciler's `pending_ids` is one indexed query), and
the callback's state and next attempt are columns (claim_callback is one transaction).
"""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import null, select, update
from sqlalchemy.orm import Session

from store.datakeys import DataKeys, KeyDestroyed, is_sealed
from store.documents import utc_now
from store.enums import CallbackState
from store.errors import Conflict, InvalidDocument, NotFound
from store.requests import TEXT_ARGS, RequestPurged, TaskArgs, _context
from store.sql.engine import Database
from store.sql.repositories.common import insert_if_absent, thaw
from store.sql.schema import Request


def _missing(job_id: Any, what: str = "not found") -> NotFound:
    return NotFound(f"request {job_id!r} {what}", kind="request")


def request_row(doc: dict[str, Any], settled: bool) -> dict[str, Any]:
    """The row of a request document (task_args must already be sealed)."""
    callback = doc.get("callback") if isinstance(doc.get("callback"), dict) else None
    next_at = callback.get("next_attempt_at") if callback else None
    return {
        "job_id": doc["job_id"], "kind": doc.get("kind"), "model_id": doc.get("model_id"),
        "created_at": doc.get("created_at") or "", "settled": settled,
        "purged_at": doc.get("purged_at"),
        "callback_state": callback.get("state") if callback else None,
        "callback_next_attempt_at": float(next_at) if next_at is not None else None,
        # SQL NULL once purged (None alone would store the JSON value null)
        "task_args": doc["task_args"] if doc.get("task_args") is not None else null(),
        "doc": {k: v for k, v in doc.items() if k != "task_args"},
    }


def _doc(row: Request) -> dict[str, Any]:
    return {**thaw(row.doc), "task_args": thaw(row.task_args)}


def check_no_plain_text(doc: dict[str, Any]) -> None:
    """InvalidDocument when a text argument of the request is not sealed."""
    args = doc.get("task_args")
    if not isinstance(args, list):
        return
    for index in TEXT_ARGS.get(str(doc.get("kind")), ()):
        if index < len(args) and not is_sealed(args[index]):
            raise InvalidDocument(f"task argument {index} of a request must be sealed")


class RequestRepository:
    def __init__(self, db: Database, data_keys: DataKeys) -> None:
        self.db = db
        self.data_keys = data_keys

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store an accepted request; doc must hold job_id, kind, task_args. The text
        arguments are sealed under a new data key of the request first."""
        args = doc.get("task_args")
        if isinstance(args, list):
            args = list(args)
            for index in TEXT_ARGS.get(str(doc.get("kind")), ()):
                if index < len(args) and not is_sealed(args[index]):
                    args[index] = self.data_keys.seal(doc["job_id"], _context(index),
                                                      args[index])
        full = {"created_at": utc_now(), "callback": None, "purged_at": None, "enqueued": 1,
                "record_hashes": [], **doc, "task_args": args}
        with self.db.write() as s:
            if not insert_if_absent(s, Request, request_row(full, settled=False)):
                raise Conflict(f"request {doc['job_id']} already exists")
        return full

    def get(self, job_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            row = s.get(Request, str(job_id))
            if row is None:
                raise _missing(job_id)
            return _doc(row)

    def find(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self.get(job_id)
        except NotFound:
            return None

    def is_settled(self, job_id: str) -> bool:
        with self.db.read() as s:
            settled = s.scalar(select(Request.settled).where(Request.job_id == str(job_id)))
        if settled is None:
            raise _missing(job_id)
        return bool(settled)

    def settle(self, job_id: str) -> None:
        """Take a request with nothing left to do out of the reconciler's way:
        `pending_ids` no longer returns it, `get` still finds it."""
        with self.db.write() as s:
            done = s.execute(update(Request).where(Request.job_id == str(job_id))
                             .values(settled=True))
            if not done.rowcount:  # type: ignore[attr-defined]
                raise _missing(job_id)

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields of a request that is not settled, in one transaction."""
        if "job_id" in fields:
            raise InvalidDocument("a request's job id cannot change")
        with self.db.write() as s:
            row = self._locked_pending(s, job_id)
            new = {**_doc(row), **fields}
            check_no_plain_text(new)
            s.execute(update(Request).where(Request.job_id == job_id)
                      .values(request_row(new, settled=False)))
        return new

    def claim_callback(self, job_id: str, now: float, hold_s: float) -> dict[str, Any] | None:
        """In one transaction, when the request's callback is pending and due at `now`
        (epoch seconds): move its next attempt to now + hold_s, so that no other process
        makes one meanwhile, and return the request as it was; None otherwise."""
        with self.db.write() as s:
            row = self._locked_pending(s, job_id)
            due = row.callback_next_attempt_at or 0
            if row.callback_state != CallbackState.PENDING or now < due:
                return None
            before = _doc(row)
            after = {**before, "callback": {**before["callback"], "next_attempt_at": now + hold_s}}
            s.execute(update(Request).where(Request.job_id == job_id)
                      .values(request_row(after, settled=False)))
        return before

    def pending_ids(self) -> builtins.list[str]:
        """Job ids of the requests not settled, oldest first (one indexed query)."""
        with self.db.read() as s:
            return list(s.scalars(select(Request.job_id).where(Request.settled.is_(False))
                                  .order_by(Request.created_at, Request.job_id)))

    def due_callbacks(self, now: float) -> builtins.list[str]:
        """Job ids of pending requests whose callback is due at `now` (indexed)."""
        with self.db.read() as s:
            return list(s.scalars(select(Request.job_id).where(
                Request.settled.is_(False), Request.callback_state == CallbackState.PENDING,
                Request.callback_next_attempt_at <= now)))

    def read_pending(self, job_ids: Any) -> builtins.list[dict[str, Any]]:
        """The pending requests of these jobs (settled or unknown ones left out), oldest
        first."""
        wanted = [str(j) for j in job_ids]
        if not wanted:
            return []
        with self.db.read() as s:
            rows = s.scalars(select(Request).where(Request.job_id.in_(wanted),
                                                   Request.settled.is_(False))
                             .order_by(Request.created_at, Request.job_id))
            return [_doc(r) for r in rows]

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every pending request, oldest first."""
        return self.read_pending(self.pending_ids())

    def open_args(self, doc: dict[str, Any]) -> TaskArgs | None:
        """A stored request's task arguments with their text opened; None once purged."""
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
        """The task argument at `position` (after the job id) of a request, opened."""
        try:
            args = self.open_args(self.get(job_id))
        except NotFound:
            args = None
        if args is None:
            raise RequestPurged(
                f"the text of request {job_id} is no longer stored (purged after its "
                "retention time); submit it again", kind="request")
        return args[position]

    def purge(self, job_id: str) -> dict[str, Any]:
        """Shred the request's data key, then drop the sealed arguments; keep ids and
        salted hashes."""
        self.data_keys.destroy(job_id)
        return self.update(job_id, task_args=None, purged_at=utc_now())

    @staticmethod
    def _locked_pending(s: Session, job_id: str) -> Request:
        row = s.scalar(select(Request).where(Request.job_id == str(job_id))
                       .with_for_update().execution_options(populate_existing=True))
        if row is None or row.settled:
            raise _missing(job_id, "is not pending")
        return row
