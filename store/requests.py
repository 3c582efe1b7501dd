"""Accepted requests, recorded durably before the API answers 202.

A request row (store.sql.repositories.requests) holds what is needed to enqueue the job
again (the task arguments) until the job has ended and the retention time has passed.
The arguments that carry request text (TEXT_ARGS) are stored sealed under the request's own data key
(store.datakeys); `purge` destroys that key (shredding every copy of the ciphertext) and
drops the arguments, keeping only salted hashes. The reconciler
re-enqueues accepted requests whose queue entry is gone, and delivers callbacks (their
state lives there too). The idempotency table maps an Idempotency-Key (hashed with the
caller's key id) to the job it created and the salted hash of the body. This module
keeps the rules the API, the worker and the repository share.
"""

from __future__ import annotations

from typing import Any

from store.enums import JobKind
from store.errors import NotFound

TaskArgs = list[Any]
"""A job's task arguments after its id (plain JSON)."""

FROM_REQUEST = "@stored-request"
"""Placeholder sent through the queue instead of request text: the worker reads the text
from the stored request, so Redis (and its append-only file) never holds it."""

TEXT_ARGS: dict[str, tuple[int, ...]] = {JobKind.FORGET: (2,), JobKind.VERIFY: (2, 3)}
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
