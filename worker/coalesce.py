"""Request coalescing: forget jobs that wait for the same edit run as one edit.

When a worker starts forget job J (the leader) it waits until J's submission time +
ZEROUNLEARN_COALESCE_WINDOW_S, then, holding the model's edit lock, walks the RQ queue
in order (oldest first, as the jobs would run) for other QUEUED forget jobs of the same
model, the same base (both following the active version, or the same explicit
version), the same method and equal hparams. Each is claimed with
`transition_job(["queued"], "running", coalesced_into=J)`: only a claimed job joins (a
cancel that won the race keeps its job out). The batch is capped at
ZEROUNLEARN_COALESCE_MAX_BATCH records (J always runs whole; the walk stops at the first
job that would not fit, so later jobs never overtake it). A claimed job's RQ entry is
removed from the queue; when another worker already popped it, that worker finds the
job "running" and skips it (logged by id only).

Each job's records are checked on their own (`zerounlearn.api.check_records`: the
record rules plus the model's token rules); a job that fails is failed alone with its
own error and the batch goes on without it. The edit itself is one engine call over
every record; its outcome (one version, or one error) is recorded on every job.

Record text is read from the store's requests (the queue carries placeholders); it is
never logged: log lines name job ids and counts only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from store import ArtifactStore, NotFound
from store.documents import JOB_ID_RE
from store.enums import JobKind, JobStatus
from worker.errors import record_texts
from worker.jobs import audit, failure_document, record_failure, record_success

logger = logging.getLogger(__name__)

Checker = Callable[[list[dict[str, Any]]], list[Any]]
"""Checks a job's raw records against the loaded model; returns the parsed records."""


def epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of a store timestamp ("...Z"); None when absent."""
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def base_spec(job: dict[str, Any]) -> tuple[str, str | None]:
    """("active", None) for a job that follows the model's head, else ("explicit", vN).
    Documents written before floating bases existed have no "base": explicit."""
    if job.get("base") == "active":
        return ("active", None)
    return ("explicit", job.get("version"))


@dataclass(frozen=True)
class EditSpec:
    """What must be equal for two forget jobs to share an edit."""

    model_id: str
    base: tuple[str, str | None]
    method: str
    hparams: dict[str, Any]
    quality_gate: dict[str, Any] = field(default_factory=dict)  # the request's own limits

    def admits(self, job: dict[str, Any], task_args: list[Any]) -> bool:
        """Whether a job document and its stored task arguments
        (model_id, base, records, method, hparams[, quality_gate]) ask for this same edit."""
        if job.get("kind") != JobKind.FORGET or job.get("model_id") != self.model_id:
            return False
        if base_spec(job) != self.base or len(task_args) < 5:
            return False
        gate = (task_args[5] if len(task_args) > 5 else None) or {}
        return (task_args[3] == self.method and (task_args[4] or {}) == self.hparams
                and gate == self.quality_gate)


@dataclass
class Member:
    """One job of a batch: its records (raw, for hashes; parsed, for the engine)."""

    job_id: str
    records: list[dict[str, Any]]
    parsed: list[Any]
    queue_wait_s: float
    start: int = 0  # its records are batch records [start, start + len(parsed))


@dataclass
class Batch:
    """The jobs of one edit, the leader first."""

    leader: Member
    peers: list[Member] = field(default_factory=list)

    @property
    def members(self) -> list[Member]:
        return [self.leader, *self.peers]

    @property
    def size(self) -> int:
        return sum(len(m.parsed) for m in self.members)

    @property
    def job_ids(self) -> list[str]:
        return [m.job_id for m in self.members]

    def add(self, member: Member) -> None:
        member.start = self.size
        self.peers.append(member)

    def parsed_records(self) -> list[Any]:
        return [r for m in self.members for r in m.parsed]

    def raw_records(self) -> list[dict[str, Any]]:
        return [r for m in self.members for r in m.records]


# ------------------------------------------------------------------ the window
def wait_window(job: dict[str, Any], window_s: float) -> float:
    """Sleep until the job's submission + window; the seconds slept."""
    created = epoch(job.get("created_at"))
    if window_s <= 0 or created is None:
        return 0.0
    # at most the window itself: a clock of the API host ahead of ours must not hold
    # the worker longer
    remaining = min(created + window_s - time.time(), window_s)
    if remaining <= 0:
        return 0.0
    time.sleep(remaining)
    return remaining


def current_queue() -> Queue | None:
    """The RQ queue the running task came from; None when called outside RQ."""
    rq_job = get_current_job()
    if rq_job is None:
        return None
    return Queue(rq_job.origin, connection=rq_job.connection)


# ------------------------------------------------------------------ gathering
def candidates(
    store: ArtifactStore, queue: Queue, spec: EditSpec, leader_id: str
) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """(job, task args) of the queued jobs asking for the same edit, in queue order."""
    seen = {leader_id}
    for job_id in queue.get_job_ids():
        if job_id in seen or not JOB_ID_RE.match(job_id):
            continue  # a duplicate entry, or not a job with a document (generate)
        seen.add(job_id)
        try:
            job = store.get_job(job_id)
        except NotFound:
            continue
        if job.get("status") != JobStatus.QUEUED:
            continue
        request = store.requests.find(job_id)
        args = store.requests.open_args(request) if request is not None else None
        # a queued job's text is never purged (retention counts from the job's end);
        # one without text is left alone: run by itself it fails with request_purged
        if isinstance(args, list) and spec.admits(job, args):
            yield job, args


def gather(
    store: ArtifactStore,
    queue: Queue,
    spec: EditSpec,
    batch: Batch,
    *,
    max_records: int,
    base_version: str,
    worker_name: str | None,
    check: Checker,
) -> None:
    """Claim queued jobs asking for the same edit into `batch` (up to max_records)."""
    leader_id = batch.leader.job_id
    for job, args in candidates(store, queue, spec, leader_id):
        records = args[2]
        count = len(records) if isinstance(records, list) else 1
        if batch.size + count > max_records:
            break  # first come, first served: a later, smaller job does not overtake it
        claimed = store.transition_job(
            job["id"], [JobStatus.QUEUED], JobStatus.RUNNING, worker=worker_name,
            coalesced_into=leader_id,
            version=base_version, progress={"phase": "coalesced", "fraction": 0.0},
        )
        if claimed is None:
            continue  # cancelled, or started by another worker, meanwhile
        audit(store, worker_name, "job.started", claimed)
        _drop_queue_entry(queue, job["id"])
        picked = time.time()
        try:
            if not isinstance(records, list):
                raise TypeError("stored records are not a list")
            parsed = check(records)
        except BaseException as exc:  # this job's records only: it fails alone
            error = failure_document(exc, record_texts(records), job["id"])
            record_failure(store, worker_name, job["id"], JobKind.FORGET, exc, error)
            if isinstance(exc, JobTimeoutException) or not isinstance(exc, Exception):
                raise  # a stop or the leader's time limit ends the whole edit
            continue
        created = epoch(job.get("created_at")) or picked
        batch.add(Member(job["id"], records, parsed, max(0.0, picked - created)))
        logger.info("job %s joins the edit of job %s (%d record(s))", job["id"], leader_id,
                    len(parsed))


def _drop_queue_entry(queue: Queue, job_id: str) -> None:
    """Remove a claimed job's RQ entry (and its RQ job) when no worker popped it yet."""
    try:
        if queue.connection.lrem(queue.key, 0, job_id):  # every entry (requeued twice)
            with suppress(NoSuchJobError):
                Job.fetch(job_id, connection=queue.connection).delete(remove_from_queue=False)
    except RedisError as exc:  # harmless: a worker popping it finds it running and skips
        logger.warning("could not remove coalesced job %s from the queue: %s", job_id,
                       type(exc).__name__)


# ------------------------------------------------------------------ outcomes
def own_records(
    member: Member, before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    """The member's per-record verification (indices are its own request's)."""
    span = slice(member.start, member.start + len(member.parsed))
    rows = []
    for index, (was, now) in enumerate(
        zip(before["records"][span], after["records"][span], strict=True)
    ):
        rows.append({"index": index, "forgotten": not now.get("reproduced", False),
                     "before": was, "after": now})
    return {"records": rows, "forgotten": sum(r["forgotten"] for r in rows),
            "total": len(rows)}


def finish_peers(
    store: ArtifactStore,
    worker_name: str | None,
    batch: Batch,
    result_for: Callable[[Member], dict[str, Any]],
) -> None:
    """Record each claimed job's success (the leader's is run_job's)."""
    for member in batch.peers:
        record_success(store, worker_name, member.job_id, result_for(member))


def fail_peers(
    store: ArtifactStore, worker_name: str | None, batch: Batch, exc: BaseException
) -> None:
    """The edit failed: so does every claimed job, with the same safe error."""
    secrets = record_texts(batch.raw_records())
    for member in batch.peers:
        error = failure_document(exc, secrets, member.job_id)
        record_failure(store, worker_name, member.job_id, JobKind.FORGET, exc, error)
