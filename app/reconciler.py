"""The reconciler: keeps every accepted request moving, at start-up and on a timer.

One pass (one API process at a time, across machines: the store's non-blocking
`exclusive` lease):
1. re-enqueue accepted requests whose job is still "queued" but whose queue entry is
   gone (Redis restarted without persistence, FLUSHDB) or ended before the task started
   (a worker died between dequeue and start); the worker's queued -> running transition
   makes a duplicate entry harmless;
2. deliver due callbacks of ended jobs (retrying with backoff, every attempt audited);
3. purge the text of requests whose job ended more than the retention time ago.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from app import callbacks
from app.queue import JobQueue
from app.settings import Settings
from store import TERMINAL_JOB_STATUSES, ArtifactStore, NotFound, StoreError
from store.requests import queue_args

logger = logging.getLogger(__name__)
ACTOR = "reconciler"


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Reconciler:
    def __init__(self, store: ArtifactStore, queue: JobQueue, settings: Settings) -> None:
        self.store, self.queue, self.settings = store, queue, settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.callback_timeout_s + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except (RedisError, StoreError, OSError) as exc:
                logger.warning("reconciler pass failed: %s", type(exc).__name__)
            except Exception as exc:  # the loop must survive anything
                logger.error("reconciler pass failed unexpectedly: %s", type(exc).__name__)
            self._stop.wait(self.settings.reconcile_interval_s)

    # ------------------------------------------------------------------ pass
    def run_once(self) -> dict[str, int]:
        counts = {"requeued": 0, "callbacks": 0, "purged": 0}
        # one pass at a time over every API process of every machine sharing the store
        with self.store.exclusive("reconciler") as mine:
            if not mine:
                return counts
            now = time.time()
            requests = self.store.requests.list()
            # RQ statuses in one round trip, read before the job documents: one Job.fetch
            # per waiting request cost the API ~1 ms of CPU each, every pass, with a backlog.
            statuses = self._queue_statuses([r["job_id"] for r in requests])
            for request in requests:
                try:
                    job = self.store.get_job(request["job_id"])
                except NotFound:
                    continue
                changed = False
                if self._requeue(request, job, now, statuses):
                    counts["requeued"] += 1
                    changed = True
                if self._callback(request, job, now):
                    counts["callbacks"] += 1
                    changed = True
                if self._purge(request, job, now):
                    counts["purged"] += 1
                    changed = True
                self._settle(job["id"], None if changed else request)
        return counts

    def _settle(self, job_id: str, request: dict[str, Any] | None = None) -> None:
        """Purged and no callback pending: nothing left to do for this request.
        `request`: its document as read in this pass, when the pass did not change it."""
        request = request if request is not None else self.store.requests.get(job_id)
        callback = request.get("callback") or {}
        if request.get("task_args") is None and callback.get("state") != "pending":
            self.store.requests.settle(job_id)

    def _requeue(self, request: dict[str, Any], job: dict[str, Any], now: float,
                 statuses: dict[str, str | None] | None = None) -> bool:
        if job["status"] != "queued" or request.get("task_args") is None:
            return False
        created = _epoch(request.get("created_at")) or now
        if now - created < self.settings.reconcile_grace_s:
            return False
        if self._queue_entry_alive(job["id"], statuses):
            return False
        self.queue.enqueue(request["kind"], job["id"],
                           *queue_args(request["kind"], request["task_args"]))
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
        cb = request.get("callback")
        if not cb or cb.get("state") != "pending" or job["status"] not in TERMINAL_JOB_STATUSES:
            return False
        if now < float(cb.get("next_attempt_at") or 0):
            return False
        attempt = int(cb.get("attempts", 0)) + 1
        secret = callbacks.callback_secret(self.settings, self.store)
        body = callbacks.payload(self.store, self.settings, job)
        with httpx.Client(timeout=self.settings.callback_timeout_s,
                          follow_redirects=False, trust_env=False) as client:
            failure = callbacks.deliver(client, cb["url"], secret, body, attempt)
        finished = _epoch(job.get("finished_at")) or now
        state = "delivered" if failure is None else "pending"
        if failure is not None and now - finished >= self.settings.callback_max_age_s:
            state = "gave_up"
        delay = callbacks.next_delay(self.settings, attempt)
        self.store.requests.update(job["id"], callback={
            **cb, "state": state, "attempts": attempt, "last_error": failure,
            "next_attempt_at": now + delay,
        })
        self.store.audit.append(
            ACTOR, "callback.attempt", ids={"job": job["id"], "model": job.get("model_id")},
            detail={"attempt": attempt, "host": urlsplit(cb["url"]).hostname,
                    "outcome": failure or "delivered", "state": state},
        )
        return failure is None

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
