"""The reconciler with a backlog: an incremental pass reads only the requests that may
need something, and still re-enqueues exactly the job whose queue entry vanished.

Real Redis (the module's own database, flushed), a real store (local, and on moto's S3
server) whose backend counts the documents read, the real RQ queue; no worker: the jobs just wait.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job, JobStatus

from app.queue import JobQueue
from app.reconciler import Reconciler
from app.settings import Settings
from store import ArtifactStore
from store.documents import new_job_id
from tests.support.counting import CountingReads, counting_backend

BACKLOG = {"local": 300, "s3": 60}  # moto serves one request at a time
MODEL = "m-0123456789ab"


def make_settings(tmp_path: Path, redis_url: str, **overrides: object) -> Settings:
    values: dict = {"redis_url": redis_url, "data_dir": tmp_path / "data",
                    "reconcile_grace_s": 0, "reconcile_interval_s": 3600}
    values.update(overrides)
    return Settings(**values)


def accept(store: ArtifactStore, queue: JobQueue) -> str:
    """What the API does for an accepted forget request (job, request, queue entry)."""
    job_id = new_job_id()
    store.create_job({"id": job_id, "kind": "forget", "model_id": MODEL})
    args = [MODEL, "v0", [{"prompt": "p", "answer": "a"}], {}]
    store.requests.create({"job_id": job_id, "kind": "forget", "task_args": args})
    queue.enqueue("forget", job_id, *args)
    return job_id


def reads(backend: CountingReads, reconciler: Reconciler, **kw: bool) -> tuple[dict, int]:
    """(counts of one pass, request rows it read: metadata is in SQL now, so the pass's
    own tally is the measure, not the blob backend's reads)."""
    counts = reconciler.run_once(**kw)
    return counts, reconciler.last_pass.read


def requeued_jobs(store: ArtifactStore) -> list[str]:
    """The jobs of the audit's "request.requeued" entries, in order."""
    entries, _ = store.audit.page(limit=10_000)
    return [e["ids"]["job"] for e in entries if e["action"] == "request.requeued"]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_incremental_pass_requeues_exactly_the_lost_job_reading_few_documents(
    kind: str, tmp_path: Path, redis: Redis, redis_url: str, request: pytest.FixtureRequest
) -> None:
    settings = make_settings(tmp_path, redis_url)
    backend = counting_backend(kind, settings.data_dir, request)
    store = ArtifactStore(settings.data_dir, backend)
    queue = JobQueue(redis, settings)
    backlog = BACKLOG[kind]
    jobs = [accept(store, queue) for _ in range(backlog)]
    reconciler = Reconciler(store, queue, settings, recheck_s=3600)
    reconciler.seen.rng = random.Random(0)

    counts, read = reads(backend, reconciler)  # start-up: a full pass reads everything
    assert counts["requeued"] == 0 and read == backlog
    counts, read = reads(backend, reconciler, full=False)  # all healthy: nothing read
    assert counts["requeued"] == 0 and read == 0
    assert reconciler.last_pass.pending == backlog and reconciler.last_pass.read == 0

    # a queue entry vanishes (FLUSHDB of one job, a Redis restart that lost it)
    lost = jobs[backlog // 2]
    Job.fetch(lost, connection=redis).delete()
    counts, read = reads(backend, reconciler, full=False)
    assert counts["requeued"] == 1
    assert reconciler.last_pass.read == 1 and read < 10, read  # not 2 * backlog
    assert Job.fetch(lost, connection=redis).get_status() == JobStatus.QUEUED
    assert lost in queue.queue.get_job_ids()
    assert store.requests.get(lost)["enqueued"] == 2
    assert all(store.requests.get(j)["enqueued"] == 1 for j in jobs if j != lost)

    # only the RQ job's hash is lost, its id still in the list (a worker would skip it)
    hashless = jobs[7]
    redis.delete(Job.key_for(hashless))
    counts, _ = reads(backend, reconciler, full=False)
    assert counts["requeued"] == 1 and store.requests.get(hashless)["enqueued"] == 2

    # requests this process never read (accepted after its last pass, or a pass taken
    # over from another API process): healthy ones are not read, a lost one is requeued
    fresh = [accept(store, queue) for _ in range(20)]
    counts, read = reads(backend, reconciler, full=False)
    assert counts["requeued"] == 0 and read == 0
    redis.delete(Job.key_for(fresh[5]))
    redis.lrem(queue.queue.key, 0, fresh[5])
    counts, _ = reads(backend, reconciler, full=False)
    assert counts["requeued"] == 1 and store.requests.get(fresh[5])["enqueued"] == 2

    # an RQ job that failed before its task started is enqueued again too
    Job.fetch(jobs[0], connection=redis).set_status(JobStatus.FAILED)
    redis.lrem(queue.queue.key, 0, jobs[0])
    counts, _ = reads(backend, reconciler, full=False)
    assert counts["requeued"] == 1 and store.requests.get(jobs[0])["enqueued"] == 2

    # nothing else was touched: one more pass does nothing and reads nothing
    counts, read = reads(backend, reconciler, full=False)
    assert counts == {"requeued": 0, "callbacks": 0, "purged": 0} and read == 0
    assert requeued_jobs(store) == [lost, hashless, fresh[5], jobs[0]]


def test_incremental_pass_sees_ended_jobs(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    """A job that ends the usual way (its RQ job leaves the queue) is purged by the next
    pass; one that ended behind a still-queued RQ entry within recheck_s."""
    recheck_s = 0.5
    settings = make_settings(tmp_path, redis_url, request_retention_s=0)
    store = ArtifactStore(settings.data_dir)
    queue = JobQueue(redis, settings)
    jobs = [accept(store, queue) for _ in range(50)]
    reconciler = Reconciler(store, queue, settings, recheck_s=recheck_s)
    reconciler.run_once()

    # as a worker finishes a job: RQ takes it off the queue, the store records the end
    done = jobs[3]
    Job.fetch(done, connection=redis).delete()
    store.transition_job(done, ["queued"], "running")
    store.transition_job(done, ["running"], "succeeded")
    counts = reconciler.run_once(full=False)
    assert counts == {"requeued": 0, "callbacks": 0, "purged": 1}
    assert store.requests.get(done)["task_args"] is None
    assert done not in store.requests.pending_ids()  # settled

    # a cancel whose removal from Redis failed: the RQ entry still says "queued"
    cancelled = jobs[4]
    store.transition_job(cancelled, ["queued"], "cancelled")
    deadline = time.monotonic() + recheck_s + 0.2
    purged = 0
    while time.monotonic() < deadline and not purged:
        purged = reconciler.run_once(full=False)["purged"]
        time.sleep(0.05)
    assert purged == 1 and store.requests.get(cancelled)["task_args"] is None
    assert reconciler.run_once(full=False)["requeued"] == 0  # never re-enqueued
