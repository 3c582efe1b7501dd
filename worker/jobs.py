"""The life of one job document: queued -> running -> succeeded | failed.

`run_job` wraps a task body: it claims the job with `transition_job(["queued"],
"running")` (a job cancelled meanwhile is skipped), hands the body a `JobRun` for
progress, and records the outcome. Failures become `{"code", "message"}` documents
(worker.errors) and are logged by code and exception type only, never by message text.
After recording a failure the exception is re-raised as a `TaskFailed` that carries only
that safe document, so RQ's failed registry agrees with the job document without ever
seeing a message that could quote a request.

`record_success` / `record_failure` end a job that is "running"; run_job uses them, and
so does a coalesced forget edit for the jobs it claimed (worker.coalesce).

`recover_orphaned_jobs` fails the jobs that a dead worker left "running" (claimed jobs
of a coalesced edit included) and frees the model edit locks it held.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException
from rq.worker import BaseWorker, Worker

from store import ArtifactStore, NotFound, StoreError
from store.enums import JobStatus
from store.logs import job_id_var
from worker.edit_lock import release_locks_of
from worker.errors import WorkerLost, WorkerStopped, error_document

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
"""Least time between two progress writes of one phase (each write is a file + fsync)."""


class TaskFailed(Exception):
    """Raised to RQ after a job document was marked failed; its text is the safe error."""

    def __init__(self, error: dict[str, str]) -> None:
        super().__init__(f"{error['code']}: {error['message']}")
        self.error = error


class JobRun:
    """A running job: throttled progress into the job document and the RQ job's meta."""

    def __init__(
        self, store: ArtifactStore, job_id: str, kind: str, job: dict[str, Any] | None = None
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.kind = kind
        self.job = job or {}  # the document as the job started (status "running")
        self._phase: str | None = None
        self._last_write = 0.0
        self._timed_phase: str | None = None
        self._phase_began = time.monotonic()
        self.timings: dict[str, float] = {}  # phase -> seconds spent in it (for /metrics)

    def _time_phase(self, phase: str | None, now: float) -> None:
        if self._timed_phase is not None:
            spent = now - self._phase_began
            self.timings[self._timed_phase] = round(
                self.timings.get(self._timed_phase, 0.0) + spent, 4
            )
        if phase != self._timed_phase:
            self._timed_phase, self._phase_began = phase, now
        else:
            self._phase_began = now

    def finish_timings(self) -> dict[str, float]:
        """Close the current phase; the seconds spent per phase."""
        self._time_phase(None, time.monotonic())
        return dict(self.timings)

    def progress(self, phase: str, fraction: float) -> None:
        """Engine-style callback `(phase, fraction in [0, 1])`."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        if phase != self._timed_phase:
            self._time_phase(phase, now)
        if phase == self._phase and fraction < 1.0 and now - self._last_write < PROGRESS_INTERVAL_S:
            return
        self._phase, self._last_write = phase, now
        progress = {"phase": phase, "fraction": round(fraction, 4)}
        self.store.update_job(self.job_id, progress=progress)
        rq_job = get_current_job()
        if rq_job is not None:
            rq_job.meta["progress"] = progress
            rq_job.save_meta()

    def scaled(self, start: float, end: float) -> Callable[[str, float], None]:
        """A callback mapping a sub-step's [0, 1] onto [start, end] of this job."""
        return lambda phase, fraction: self.progress(phase, start + (end - start) * fraction)


def run_job(
    store: ArtifactStore,
    job_id: str,
    kind: str,
    body: Callable[[JobRun], dict[str, Any]],
    *,
    worker_name: str | None = None,
    secrets: Iterable[str] = (),
    on_failure: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, Any]:
    """Run `body` as job `job_id`; return its result (or a note when the job was skipped)."""
    token = job_id_var.set(job_id)
    try:
        return _run_job(store, job_id, kind, body, worker_name, secrets, on_failure)
    finally:
        job_id_var.reset(token)


def _run_job(
    store: ArtifactStore,
    job_id: str,
    kind: str,
    body: Callable[[JobRun], dict[str, Any]],
    worker_name: str | None,
    secrets: Iterable[str],
    on_failure: Callable[[dict[str, str]], None] | None,
) -> dict[str, Any]:
    started = store.transition_job(job_id, [JobStatus.QUEUED], JobStatus.RUNNING,
                                   worker=worker_name)
    if started is None:
        status = store.get_job(job_id).get("status")
        logger.info("job %s (%s) is %s, not queued: skipped", job_id, kind, status)
        return {"skipped": True, "status": status}
    logger.info("job %s (%s) started", job_id, kind)
    audit(store, worker_name, "job.started", started)
    run = JobRun(store, job_id, kind, started)
    began = time.perf_counter()
    try:
        result = body(run)
    except BaseException as exc:
        error = failure_document(exc, secrets, job_id)
        record_failure(store, worker_name, job_id, kind, exc, error, run.finish_timings())
        if on_failure is not None:
            on_failure(error)
        if isinstance(exc, SystemExit | KeyboardInterrupt | JobTimeoutException):
            raise
        raise TaskFailed(error) from None
    record_success(store, worker_name, job_id, result, run.finish_timings())
    logger.info("job %s (%s) succeeded in %.1f s", job_id, kind, time.perf_counter() - began)
    return result


def failure_document(
    exc: BaseException, secrets: Iterable[str], job_id: str | None
) -> dict[str, Any]:
    """The safe error of a job that raised `exc` (a stop of the worker: worker_stopped)."""
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        exc = WorkerStopped("the worker was stopped while the job ran; submit it again")
    return error_document(exc, secrets=secrets, job_id=job_id)


def record_failure(
    store: ArtifactStore,
    worker_name: str | None,
    job_id: str,
    kind: str,
    exc: BaseException,
    error: dict[str, str],
    timings: dict[str, float] | None = None,
) -> dict[str, Any] | None:
    """Log, mark failed (if still running) and audit; the new document or None."""
    _log_failure(job_id, kind, exc, error)
    fields: dict[str, Any] = {"error": error}
    if timings is not None:
        fields["timings"] = timings
    done = store.transition_job(job_id, [JobStatus.RUNNING], JobStatus.FAILED, **fields)
    if done is not None:
        audit(store, worker_name, "job.failed", done, detail={"code": error["code"]})
    return done


def record_success(
    store: ArtifactStore,
    worker_name: str | None,
    job_id: str,
    result: dict[str, Any],
    timings: dict[str, float] | None = None,
) -> dict[str, Any] | None:
    """Mark succeeded with `result` (if still running) and audit; the new document or None."""
    fields: dict[str, Any] = {"result": result, "progress": {"phase": "done", "fraction": 1.0}}
    if timings is not None:
        fields["timings"] = timings
    done = store.transition_job(job_id, [JobStatus.RUNNING], JobStatus.SUCCEEDED, **fields)
    if done is not None:
        entry = audit(store, worker_name, "job.succeeded", done, detail=_outcome(result))
        if entry is not None:  # the receipt names it (app.receipts; it can also find it)
            try:
                done = store.update_job(job_id, audit_entry={"seq": entry["seq"],
                                                             "hash": entry["hash"]})
            except (StoreError, OSError) as exc:
                logger.error("could not note the audit entry of job %s: %s", job_id,
                             type(exc).__name__)
    return done


def audit(
    store: ArtifactStore,
    worker_name: str | None,
    action: str,
    job: dict[str, Any],
    detail: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Append a job event to the audit trail and return the entry; a failure to do so is
    logged, not raised (the job's own outcome is already durable in its document)."""
    request = store.requests.find(job["id"])
    try:
        return store.audit.append(
            f"worker:{worker_name or 'unnamed'}",
            action,
            ids={"job": job["id"], "model": job.get("model_id"), "version": job.get("version")},
            record_hashes=(request or {}).get("record_hashes") or [],
            detail=detail,
        )
    except OSError as exc:
        logger.error("could not append %s of job %s to the audit trail: %s",
                     action, job["id"], type(exc).__name__)
        return None


def _outcome(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "parent", "passed", "path")
    return {k: result[k] for k in keys if k in result and not isinstance(result[k], dict)}


def _log_failure(job_id: str, kind: str, exc: BaseException, error: dict[str, str]) -> None:
    """Log a failure by code and type; frames (file, line, code) only for the unexpected."""
    if error["code"] == "internal_error":
        frames = "".join(traceback.format_tb(exc.__traceback__))
        logger.error(
            "job %s (%s) failed: internal_error %s\n%s", job_id, kind, type(exc).__name__, frames
        )
    else:
        logger.warning(
            "job %s (%s) failed: %s (%s)", job_id, kind, error["code"], type(exc).__name__
        )


def dead_local_workers(connection: Redis, me: str | None = None) -> list[BaseWorker]:
    """Registered workers of THIS host whose process is gone (killed, crashed).

    A worker killed by SIGKILL cannot unregister; its RQ registration lingers until the
    running job's timeout + 60 s. On the same host the pid tells: no such process, or
    our own pid under another name (a restarted container runs its worker as pid 1).
    """
    host, pid = socket.gethostname(), os.getpid()
    dead = []
    for worker in Worker.all(connection=connection):
        if worker.name == me or worker.hostname != host or not worker.pid:
            continue
        if worker.pid == pid or not _pid_exists(worker.pid):
            dead.append(worker)
    return dead


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def recover_orphaned_jobs(
    store: ArtifactStore,
    connection: Redis,
    *,
    me: str | None = None,
    on_failure: Callable[[dict[str, Any], dict[str, str]], None] | None = None,
) -> list[str]:
    """Fail the "running" jobs whose worker is gone; runs at every worker start.

    Gone: not registered in Redis any more (a clean stop, or its registration expired)
    or registered by a dead process of this host (`dead_local_workers`, whose stale
    registrations are removed too, so /readyz stops counting them). Returns the ids.
    """
    dead = dead_local_workers(connection, me)
    for worker in dead:
        logger.warning("worker %s (pid %s) is dead; removing its registration",
                       worker.name, worker.pid)
        worker.register_death()
    for model_id in release_locks_of(connection, [w.name for w in dead]):
        logger.warning("freed the edit lock of model %s held by a dead worker", model_id)
    alive = {w.name for w in Worker.all(connection=connection)}
    failed = []
    for job in store.list_jobs(status=JobStatus.RUNNING):  # an indexed query
        owner = job.get("worker")
        if job.get("status") != JobStatus.RUNNING or not owner or owner in alive or owner == me:
            continue
        error = error_document(
            WorkerLost(f"worker {owner} stopped before the job ended; submit it again")
        )
        try:
            done = store.transition_job(job["id"], [JobStatus.RUNNING], JobStatus.FAILED,
                                        error=error)
        except NotFound:
            continue
        if done is not None:
            logger.warning("job %s (%s) failed: its worker %s is gone", job["id"],
                           job.get("kind"), owner)
            failed.append(job["id"])
            audit(store, me, "job.failed", done, detail={"code": error["code"]})
            if on_failure is not None:
                on_failure(done, error)
    return failed
