"""The reconciler: keeps every accepted request moving, at start-up and on a timer.

One pass (one API process at a time, across machines: the store's non-blocking
`exclusive` lease):
1. re-enqueue accepted requests whose job is still "queued" but whose queue entry is
   gone (Redis restarted without persistence, FLUSHDB) or ended before the task started
   (a worker died between dequeue and start); the worker's queued -> running transition
   makes a duplicate entry harmless;
2. hand due callbacks of ended jobs to the CallbackDispatcher (app.callback_delivery),
   whose threads make the attempts (retrying with backoff, every attempt audited): a
   slow receiver never holds up the pass;
3. purge the text of requests whose job ended more than the retention time ago;
4. sign the audit trail's head (app.checkpoints) when it moved and the last checkpoint
   is older than ZEROUNLEARN_AUDIT_CHECKPOINT_INTERVAL_S.

What a pass reads. The first pass of a process (and any explicit `run_once()`) reads
every pending request and job document. The timer's later passes are incremental
(`run_once(full=False)`), because with a backlog of queued jobs reading every document
every pass cost the API process ~35 us of CPU per request (the pass runs in a thread of
the API process: it holds the GIL, so doing less is what keeps requests fast). An
incremental pass
- lists the pending requests' names (no document read; on S3 one LIST per 1,000);
- checks the queue side in bulk: the RQ queues' id lists (one LRANGE each) and that those
  RQ jobs still exist (one EXISTS per 1,000), then the RQ status (pipelined HGETs) of
  the few that are not in the list (running ones, lost ones);
- reads the documents only of requests that may need something: whose RQ job is not
  queued or running any more (lost, failed before start, or ended: step 1, 2 or 3),
  whose ended job has a callback or a purge due, that it has not read since it listed
  them first or read them last `recheck_s` ago (30-60 s, jittered so that requests
  seen together are not all read again together), or whose last pass changed them.
So a request whose queue entry vanishes is re-enqueued by the next pass after the
grace time, as with a full pass. What only a document can tell (a job ended while its
RQ entry still waits, e.g. a cancel whose removal from Redis failed) is seen within
`recheck_s`. Every action is decided on documents read in the same pass; the memory of
earlier passes (`SeenRequests`, one per process) only decides what to read.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from app import checkpoints
from app.callback_delivery import CallbackDispatcher
from app.errors import ConflictError
from app.queue import JobQueue, interactive_job
from app.settings import Settings
from app.signing import ReceiptKeys
from store import TERMINAL_JOB_STATUSES, ArtifactStore, NotFound, StoreError
from store.enums import CallbackState
from store.enums import JobStatus as DocumentStatus  # rq.job.JobStatus is RQ's own
from store.requests import queue_args

logger = logging.getLogger(__name__)
ACTOR = "reconciler"
RECHECK_S = 60.0
"""Longest time an incremental pass goes without reading a pending request's documents."""
RQ_WAITING = frozenset(
    s.value for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED,
                      JobStatus.SCHEDULED)
)
"""RQ statuses of a job that will still run or is running: nothing to do for it yet."""
EXISTS_CHUNK = 1000
"""RQ job keys per EXISTS command."""
CHECKPOINT_CHECK_S = 60.0
"""Longest time between two looks at whether a periodic audit checkpoint is due."""


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass
class Seen:
    """What a pass knew of one pending request."""

    recheck_at: float  # read its documents again by then at the latest
    ended: bool = False  # its job had ended when last read
    due_at: float = math.inf  # ended: when its next callback attempt or purge is due


@dataclass
class PassStats:
    """What the last pass did (for tests and logs)."""

    full: bool = True
    pending: int = 0  # pending requests listed
    read: int = 0  # requests whose documents were read
    rq_exact: int = 0  # RQ statuses read one by one (pipelined HGET)


@dataclass
class SeenRequests:
    """The reconciler's memory between passes: which pending requests need no reading."""

    recheck_s: float = RECHECK_S
    rng: random.Random = field(default_factory=random.Random)
    entries: dict[str, Seen] = field(default_factory=dict)

    def _recheck_at(self, now: float) -> float:
        # jittered, so requests first seen together are not all read again together
        return now + self.recheck_s * self.rng.uniform(0.5, 1.0)

    def keep_only(self, job_ids: Iterable[str]) -> None:
        """Forget requests no longer pending (settled)."""
        keep = set(job_ids)
        for job_id in [j for j in self.entries if j not in keep]:
            del self.entries[job_id]

    def resting(self, job_id: str, now: float) -> bool:
        """Its job ended and nothing is due: no need to look at Redis either."""
        seen = self.entries.get(job_id)
        return (seen is not None and seen.ended and now < seen.due_at
                and now < seen.recheck_at)

    def can_skip_waiting(self, job_id: str, now: float) -> bool:
        """For a request whose RQ job is queued or running: skip reading it? A request
        never read is skipped (and read by recheck_at); one read as not ended, until
        its recheck time."""
        seen = self.entries.get(job_id)
        if seen is None:
            self.entries[job_id] = Seen(self._recheck_at(now))
            return True
        return not seen.ended and now < seen.recheck_at

    def note_read(self, job_id: str, now: float, request: dict[str, Any] | None,
                  job: dict[str, Any] | None, retention_s: float) -> None:
        """Record documents read in this pass; None (missing, or changed by this pass):
        read again next pass."""
        if request is None or job is None:
            self.entries.pop(job_id, None)
            return
        seen = Seen(self._recheck_at(now), ended=job["status"] in TERMINAL_JOB_STATUSES)
        if seen.ended:
            due = []
            callback = request.get("callback") or {}
            if callback.get("state") == CallbackState.PENDING:
                due.append(float(callback.get("next_attempt_at") or 0))
            if request.get("task_args") is not None:
                due.append((_epoch(job.get("finished_at")) or now) + retention_s)
            seen.due_at = min(due, default=math.inf)
        self.entries[job_id] = seen


class Reconciler:
    def __init__(self, store: ArtifactStore, queue: JobQueue, settings: Settings,
                 recheck_s: float = RECHECK_S) -> None:
        self.store, self.queue, self.settings = store, queue, settings
        self.seen = SeenRequests(recheck_s)
        self.last_pass = PassStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_checkpoint_check = 0.0
        self._touched: set[str] = set()  # requests the dispatcher changed: read again
        self._touched_lock = threading.Lock()
        self.callbacks = CallbackDispatcher(store, settings, on_done=self._touch)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.callbacks.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _touch(self, job_id: str) -> None:
        """The dispatcher recorded an attempt: the next pass reads the request again."""
        with self._touched_lock:
            self._touched.add(job_id)

    def _loop(self) -> None:
        full = True  # at start-up: read everything once
        while not self._stop.is_set():
            try:
                self.run_once(full=full)
                full = False
            except (RedisError, StoreError, OSError) as exc:
                logger.warning("reconciler pass failed: %s", type(exc).__name__)
            except Exception as exc:  # the loop must survive anything
                logger.error("reconciler pass failed unexpectedly: %s", type(exc).__name__)
            self._stop.wait(self.settings.reconcile_interval_s)

    # ------------------------------------------------------------------ pass
    def run_once(self, full: bool = True) -> dict[str, int]:
        """One pass; full=False: the incremental pass (module docstring)."""
        counts = {"requeued": 0, "callbacks": 0, "purged": 0}
        # one pass at a time over every API process of every machine sharing the store
        # (so `self.seen` is only ever touched by one thread at a time)
        with self.store.exclusive("reconciler") as mine:
            if not mine:
                return counts
            now = time.time()
            with self._touched_lock:
                touched, self._touched = self._touched, set()
            for job_id in touched:
                self.seen.entries.pop(job_id, None)
            pending = self.store.requests.pending_ids()
            self.seen.keep_only(pending)
            stats = PassStats(full=full, pending=len(pending))
            if full:
                to_read = pending
                # RQ statuses in one round trip, read before the job documents
                statuses = self._queue_statuses(pending)
            else:
                to_read, statuses = self._triage(pending, now)
            stats.rq_exact = len(statuses)
            requests = self.store.requests.read_pending(to_read)
            stats.read = len(requests)
            for request in requests:
                try:
                    job = self.store.get_job(request["job_id"])
                except NotFound:
                    self.seen.note_read(request["job_id"], now, None, None, 0)
                    continue
                changed = False
                if self._requeue(request, job, now, statuses):
                    counts["requeued"] += 1
                    changed = True
                if self._callback(request, job, now):
                    counts["callbacks"] += 1  # handed over (the attempt changes it later)
                if self._purge(request, job, now):
                    counts["purged"] += 1
                    changed = True
                self._settle(job["id"], None if changed else request)
                self.seen.note_read(job["id"], now, None if changed else request, job,
                                    self.settings.request_retention_s)
            self._checkpoint(now)
            if full:  # expired Idempotency-Keys: one indexed delete
                self.store.idempotency.purge_expired()
            self.last_pass = stats
        return counts

    def _triage(self, pending: list[str], now: float) -> tuple[list[str], dict[str, str | None]]:
        """(the requests to read, RQ statuses read one by one) for an incremental pass."""
        looking = [j for j in pending if not self.seen.resting(j, now)]
        queued = self._confirmed_queued(looking)
        statuses = self._queue_statuses([j for j in looking if j not in queued])
        to_read = [j for j in looking
                   if not ((j in queued or statuses[j] in RQ_WAITING)
                           and self.seen.can_skip_waiting(j, now))]
        # the requeue decision wants each read request's exact RQ status
        statuses.update(self._queue_statuses([j for j in to_read if j not in statuses]))
        return to_read, statuses

    def _confirmed_queued(self, job_ids: list[str]) -> set[str]:
        """Those of job_ids that wait in the RQ queue's list and whose RQ job exists
        (a list entry without its job is skipped by workers: lost)."""
        listed = set(self.queue.queued_ids())
        candidates = [j for j in job_ids if j in listed]
        chunks = [candidates[i:i + EXISTS_CHUNK]
                  for i in range(0, len(candidates), EXISTS_CHUNK)]
        pipe = self.queue.redis.pipeline(transaction=False)
        for chunk in chunks:
            pipe.exists(*[Job.key_for(j) for j in chunk])
        found = pipe.execute() if chunks else []
        confirmed: set[str] = set()
        for chunk, count in zip(chunks, found, strict=True):
            if count == len(chunk):  # else: some are gone; their statuses tell which
                confirmed.update(chunk)
        return confirmed

    def _settle(self, job_id: str, request: dict[str, Any] | None = None) -> None:
        """Purged and no callback pending: nothing left to do for this request.
        `request`: its document as read in this pass, when the pass did not change it."""
        request = request if request is not None else self.store.requests.get(job_id)
        callback = request.get("callback") or {}
        if request.get("task_args") is None and callback.get("state") != CallbackState.PENDING:
            self.store.requests.settle(job_id)

    def _requeue(self, request: dict[str, Any], job: dict[str, Any], now: float,
                 statuses: dict[str, str | None] | None = None) -> bool:
        if job["status"] != DocumentStatus.QUEUED or request.get("task_args") is None:
            return False
        created = _epoch(request.get("created_at")) or now
        if now - created < self.settings.reconcile_grace_s:
            return False
        if self._queue_entry_alive(job["id"], statuses):
            return False
        records = len(request.get("record_hashes") or [])
        self.queue.enqueue(request["kind"], job["id"],
                           *queue_args(request["kind"], request["task_args"]),
                           interactive=interactive_job(request["kind"], records))
        self.store.requests.update(job["id"], enqueued=int(request.get("enqueued", 1)) + 1)
        self.store.audit.append(ACTOR, "request.requeued",
                                ids={"job": job["id"], "model": job.get("model_id")},
                                record_hashes=request.get("record_hashes"))
        logger.warning("job %s was queued but missing from Redis: enqueued again", job["id"])
        return True

    def _queue_statuses(self, job_ids: list[str]) -> dict[str, str | None]:
        """Each job's RQ status (None: Redis holds no such job), in one round trip."""
        pipe = self.queue.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "status")
        found = pipe.execute() if job_ids else []
        return {j: (s.decode() if isinstance(s, bytes) else s) or None
                for j, s in zip(job_ids, found, strict=True)}

    def _queue_entry_alive(
        self, job_id: str, statuses: dict[str, str | None] | None = None
    ) -> bool:
        """Does Redis still hold a job that will run (not lost, not failed before start)?
        `statuses`: RQ statuses read earlier in this pass (else fetched now)."""
        if statuses is not None and job_id in statuses:
            status = statuses[job_id]
            if status is None:
                return False
            return status not in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
        try:
            status = Job.fetch(job_id, connection=self.queue.redis).get_status(refresh=False)
        except NoSuchJobError:
            return False
        return status not in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)

    def _callback(self, request: dict[str, Any], job: dict[str, Any], now: float) -> bool:
        """Hand a due callback to the dispatcher (True when handed over now)."""
        cb = request.get("callback")
        if (not cb or cb.get("state") != CallbackState.PENDING
                or job["status"] not in TERMINAL_JOB_STATUSES):
            return False
        if now < float(cb.get("next_attempt_at") or 0):
            return False
        return self.callbacks.submit(job["id"])

    def _checkpoint(self, now: float) -> None:
        """Step 4: a periodic signed checkpoint, when due (looked at once a minute at
        most: a broken chain is logged that often, not every pass)."""
        if now < self._next_checkpoint_check:
            return
        interval = self.settings.audit_checkpoint_interval_s
        self._next_checkpoint_check = now + min(interval, CHECKPOINT_CHECK_S)
        if not checkpoints.due(self.store, interval, now):
            return
        try:
            doc, new = checkpoints.make_checkpoint(self.store, ReceiptKeys(self.settings,
                                                                           self.store))
        except ConflictError as exc:  # a broken chain is never signed: say so
            logger.error("audit checkpoint not made: %s", exc.message)
            return
        if new:
            logger.info("audit checkpoint signed at entry %d", doc["checkpoint"]["seq"])

    def _purge(self, request: dict[str, Any], job: dict[str, Any], now: float) -> bool:
        if request.get("task_args") is None or job["status"] not in TERMINAL_JOB_STATUSES:
            return False
        finished = _epoch(job.get("finished_at")) or now
        if now - finished < self.settings.request_retention_s:
            return False
        self.store.requests.purge(job["id"])
        self.store.audit.append(ACTOR, "request.purged", ids={"job": job["id"]},
                                record_hashes=request.get("record_hashes"))
        return True
