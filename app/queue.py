"""The job queue client: RQ over Redis, jobs enqueued by dotted path.

Request text never travels in the clear: forget and verify jobs carry a placeholder
(the worker reads the sealed text from the store), and a generate job carries its
prompt sealed under a per-request data key kept in the store (store.datakeys). Each RQ job gets an
explicit, text-free description (RQ's default is the call with its arguments, which
workers log), short result/failure TTLs, and is deleted once cancelled or answered.

Two RQ queues per device class: "zerounlearn-{class}" for edits and other long jobs, and
"zerounlearn-{class}-interactive" for short ones (generate, export, a verify of one
record: `interactive_job`). A worker listens to the interactive queue first (RQ takes
from its queues in order), and a worker started with ZEROUNLEARN_WORKER_QUEUES=interactive
listens to nothing else, so short calls never wait behind a running edit.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import suppress
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

from app.errors import Timeout, WorkerFailed
from app.settings import Settings
from store.enums import JobKind

logger = logging.getLogger(__name__)

TASKS: dict[str, str] = {
    JobKind.PREPARE: "worker.tasks.prepare_model",
    JobKind.FORGET: "worker.tasks.forget",
    JobKind.VERIFY: "worker.tasks.verify",
    JobKind.EXPORT: "worker.tasks.export",
    JobKind.COMPACT: "worker.compaction.compact",
    JobKind.RETAIN: "worker.bank.measure_retain",
    JobKind.GENERATE: "worker.tasks.generate",
}
"""Dotted path of the worker function for each kind of job."""

INTERACTIVE_SUFFIX = "-interactive"
"""The interactive queue's name: the device class's queue name and this suffix."""
INTERACTIVE_KINDS = frozenset({JobKind.GENERATE, JobKind.EXPORT})
"""Job kinds that are always short; a verify is short with one record."""
GENERATE_RESULT_TTL_S = 60
RESIDENT_KEY_PREFIX = "zerounlearn:resident:"  # worker.metrics.RESIDENT_KEY_PREFIX
"""Seconds a generate answer stays in Redis if the API never collects it."""
_POLL_BLOCK_S = 2
"""Longest single blocking read of a result stream (below the socket timeout)."""


def connect_redis(settings: Settings) -> Redis:
    """A Redis client for RQ (bytes responses); connects lazily, fails fast."""
    if not settings.redis_url:
        raise ValueError("REDIS_URL is not set")
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=_POLL_BLOCK_S + 10,
        health_check_interval=30,
    )


def interactive_job(kind: str, records: int = 0) -> bool:
    """Does a job of this kind (with this many records) go to the interactive queue?"""
    return kind in INTERACTIVE_KINDS or (kind == JobKind.VERIFY and records <= 1)


class JobQueue:
    """Enqueue, cancel and wait for worker jobs on the device class's RQ queues."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.queue = Queue(settings.queue_name, connection=redis)
        self.interactive = Queue(settings.queue_name + INTERACTIVE_SUFFIX, connection=redis)

    @property
    def name(self) -> str:
        return self.queue.name

    def ping(self) -> None:
        """Raise RedisError when Redis does not answer."""
        self.redis.ping()

    def queued_ids(self) -> list[str]:
        """The RQ job ids waiting in both queues (two LRANGEs)."""
        return self.queue.get_job_ids() + self.interactive.get_job_ids()

    def enqueue(self, kind: str, job_id: str, *args: Any, interactive: bool | None = None) -> None:
        """Enqueue TASKS[kind](job_id, *args) under RQ job id = our job id, on the
        interactive queue when `interactive` (None: as the kind alone says)."""
        short = interactive if interactive is not None else kind in INTERACTIVE_KINDS
        (self.interactive if short else self.queue).enqueue(
            TASKS[kind],
            job_id,
            *args,
            job_id=job_id,
            description=f"{kind} {job_id}",
            job_timeout=self.settings.job_timeout(kind),
            result_ttl=self.settings.result_ttl_s,
            failure_ttl=self.settings.failure_ttl_s,
        )

    def cancel(self, job_id: str) -> None:
        """Take a queued job off the queue and drop its arguments; best effort.

        The store's transition to "cancelled" is what stops the job: a worker that
        already dequeued it finds it cancelled and returns early.
        """
        try:
            _drop_if_queued(Job.fetch(job_id, connection=self.redis))
        except NoSuchJobError:
            return
        except RedisError as exc:
            logger.warning("could not remove job %s from Redis: %s", job_id, type(exc).__name__)

    def workers_alive(self, interactive: bool = False) -> int:
        """Number of live workers listening on the edits queue (interactive: on the
        interactive queue): those in RQ's registry, plus those whose own heartbeat key
        (the resident-model publication a worker refreshes every 5 s, TTL 20 s) names
        the queue. In a loaded test run RQ's registration of a worker lapsed while the
        worker went on serving the queue (cause not found); the heartbeat keeps
        `generate` from refusing then."""
        target = self.interactive if interactive else self.queue
        names = {w.name for w in Worker.all(queue=target)}
        for key in self.redis.scan_iter(match=RESIDENT_KEY_PREFIX + "*", count=100):
            raw = self.redis.get(key)
            try:
                data = json.loads(raw) if raw else {}
                queues = data.get("queues") or [data["queue"]]
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if target.name in queues:
                name = key.decode() if isinstance(key, bytes) else str(key)
                names.add(name[len(RESIDENT_KEY_PREFIX):])
        return len(names)

    def generate(
        self, request_id: str, model_id: str, version: str, prompt: dict, max_new_tokens: int
    ) -> dict:
        """Run worker.tasks.generate on the interactive queue, ahead of other jobs, and
        wait for its answer.

        `prompt` is sealed under the data key of `request_id` (the RQ job id), and the
        answer comes back sealed the same way (app.services.generate). Timeout (504)
        past settings.generate_timeout_s; WorkerFailed (502) when the worker raised.
        The RQ job is deleted afterwards.
        """
        timeout = self.settings.generate_timeout_s
        job = self.interactive.enqueue(
            TASKS[JobKind.GENERATE],
            model_id,
            version,
            prompt,
            max_new_tokens,
            request_id,
            job_id=request_id,
            description=f"generate {model_id} {version}",
            at_front=True,
            job_timeout=self.settings.job_timeout(JobKind.GENERATE),
            ttl=max(1, int(timeout) + 1),
            result_ttl=GENERATE_RESULT_TTL_S,
            failure_ttl=GENERATE_RESULT_TTL_S,
        )
        result = self._wait(job, time.monotonic() + timeout)
        with suppress(RedisError, NoSuchJobError):
            if result is None:
                _drop_if_queued(job)  # a running one ends by itself; its TTLs are short
            else:
                job.delete()  # the prompt leaves Redis with the job
        if result is None:
            raise Timeout(
                f"no worker answered within {timeout:g} s; retry later",
                code="generate_timeout",
            )
        if result.type != Result.Type.SUCCESSFUL or not isinstance(result.return_value, dict):
            logger.warning("generate job %s ended %s", job.id, result.type.name)
            raise WorkerFailed("the worker failed to generate text; see the worker log")
        return result.return_value

    @staticmethod
    def _wait(job: Job, deadline: float) -> Result | None:
        while (remaining := deadline - time.monotonic()) > 0:
            block = max(1, min(_POLL_BLOCK_S, int(remaining + 0.999)))
            result = job.latest_result(timeout=block)
            if result is not None:
                return result
        return None


def _drop_if_queued(job: Job) -> None:
    """Remove a job that no worker has started, arguments and all; nothing when it is
    gone (a worker finished and deleted it after the caller fetched it)."""
    try:
        status = job.get_status(refresh=True)
    except InvalidJobOperation:  # RQ: "failed to retrieve status": the hash is gone
        return
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        with suppress(InvalidJobOperation):
            job.cancel()
        job.delete()
