"""Accepting a job: durably, idempotently, audited, then enqueued.

Request text is not sent through Redis: the queued task gets a placeholder and the worker
reads the text from the stored request. Order: Redis is pinged first (503 before anything
is written); the job row and the request (the task's arguments, so the job can be
enqueued again) are committed; the acceptance is appended to the audit trail;
then the job is enqueued. The reconciler
re-enqueues a durable request whose queue entry is lost. With an Idempotency-Key, the
same key and body give back the same job and a different body is 409.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from app.auth import Principal
from app.errors import ConflictError
from app.queue import JobQueue, interactive_job
from store import ArtifactStore, NotFound, new_job_id
from store.enums import CallbackState, JobStatus
from store.hashing import RECORD_SALT, salted_hash
from store.requests import queue_args

logger = logging.getLogger(__name__)

QUEUE_DOWN = {"code": "queue_unavailable", "message": "the job could not be queued"}

FIRST_JOB_WAIT_S = 5.0
"""How long a retry waits for the job of a first request that is still being accepted."""


@dataclass(frozen=True)
class Submission:
    """One job to accept: what to run and what to remember about it."""

    kind: str
    model_id: str
    version: str
    args: tuple[Any, ...]
    record_hashes: tuple[str, ...] = ()
    callback_url: str | None = None
    # The request as the caller sent it (path parameters included), for the idempotency
    # check. Not `version`: a forget without base_version resolves to the active version,
    # which a retry after the first job succeeded would see moved on.
    body: dict[str, Any] | None = None
    # Extra fields of the job document (a forget's "base": "active" | "explicit").
    job_fields: dict[str, Any] | None = None
    # Audit entries (action, detail) written with the acceptance (a loosened gate).
    audits: tuple[tuple[str, dict[str, Any]], ...] = ()


def submit_job(
    store: ArtifactStore,
    queue: JobQueue,
    principal: Principal,
    sub: Submission,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Accept `sub` (or return the job an earlier identical request created)."""
    queue.ping()
    if not idempotency_key:
        return _accept(store, queue, principal, sub)
    # The key is claimed by inserting its record (a unique key: of two racing requests
    # one inserts, the other gets the winner's record); the record expires after
    # store.sql.repositories.idempotency.IDEMPOTENCY_TTL (24 hours).
    salt = store.secret(RECORD_SALT)
    key_hash = salted_hash(salt, ["idempotency", principal.key_id, idempotency_key])
    body_hash = salted_hash(salt, [sub.kind, sub.model_id, sub.body])
    job_id = new_job_id()
    record, mine = store.idempotency.insert_or_get(key_hash, job_id, body_hash)
    if not mine:
        if record["body_hash"] != body_hash:
            raise ConflictError(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
            )
        return _first_job(store, record["job_id"])
    try:
        return _accept(store, queue, principal, sub, job_id)
    except BaseException:
        # nothing usable was accepted under the key: a retry may try again
        store.idempotency.release(key_hash, job_id)
        raise


def _first_job(store: ArtifactStore, job_id: str) -> dict[str, Any]:
    """The job the first request with the key created. That request inserted the key
    first and creates its job right after: wait a moment for it."""
    deadline = time.monotonic() + FIRST_JOB_WAIT_S
    while True:
        try:
            return store.get_job(job_id)
        except NotFound:
            if time.monotonic() >= deadline:
                raise ConflictError("a request with this Idempotency-Key is still being "
                                    "accepted; retry", code="idempotency_key_in_use") from None
            time.sleep(0.05)


def _accept(
    store: ArtifactStore, queue: JobQueue, principal: Principal, sub: Submission,
    job_id: str | None = None,
) -> dict[str, Any]:
    job_id = job_id or new_job_id()
    callback = None
    if sub.callback_url:
        callback = {"url": sub.callback_url, "state": CallbackState.PENDING, "attempts": 0,
                    "next_attempt_at": 0.0, "last_error": None}
    job = store.create_job(
        {**(sub.job_fields or {}), "id": job_id, "kind": sub.kind, "model_id": sub.model_id,
         "version": sub.version}
    )
    store.requests.create(
        {
            "job_id": job_id,
            "kind": sub.kind,
            "model_id": sub.model_id,
            "version": sub.version,
            "actor": principal.key_id,
            "task_args": list(sub.args),
            "record_hashes": list(sub.record_hashes),
            "callback": callback,
        }
    )
    store.audit.append(
        principal.key_id,
        "request.accepted",
        ids={"job": job_id, "model": sub.model_id, "version": sub.version},
        record_hashes=list(sub.record_hashes),
        detail={"kind": sub.kind, "callback": callback is not None},
    )
    for action, detail in sub.audits:
        store.audit.append(principal.key_id, action, ids={"job": job_id, "model": sub.model_id},
                           detail=detail)
    try:
        queue.enqueue(sub.kind, job_id, *queue_args(sub.kind, list(sub.args)),
                      interactive=interactive_job(sub.kind, len(sub.record_hashes)))
    except RedisError:
        failed = store.transition_job(job_id, [JobStatus.QUEUED], JobStatus.FAILED,
                                      error=QUEUE_DOWN)
        store.requests.purge(job_id)
        if failed is not None:
            store.audit.append(principal.key_id, "job.failed", ids={"job": job_id},
                               detail={"code": QUEUE_DOWN["code"]})
        raise
    return job
