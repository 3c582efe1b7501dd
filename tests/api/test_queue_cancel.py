"""Cancelling a job that a worker finished (and RQ deleted) between the API's fetch and
its status check: no error, so DELETE /v1/jobs/{id} never answers 500 for that race
(the dashboard's browser test met it once in three runs). Real Redis, a database of its own."""

from __future__ import annotations

from rq import Queue
from rq.job import Job

from app.queue import _drop_if_queued
from tests.support.redis_dbs import redis_db


def test_a_job_deleted_after_its_fetch_is_left_alone() -> None:
    with redis_db("queue-cancel") as url:
        from redis import Redis

        redis = Redis.from_url(url)
        queue = Queue("zerounlearn-test-cancel", connection=redis)
        queued = queue.enqueue("builtins.print", "x", job_id="j-00000000000000aa")
        fetched = Job.fetch(queued.id, connection=redis)  # what cancel() holds
        Job.fetch(queued.id, connection=redis).delete()  # the worker's clean-up wins
        _drop_if_queued(fetched)  # raised InvalidJobOperation before the fix
        still = Job.fetch(queue.enqueue("builtins.print", "y").id, connection=redis)
        _drop_if_queued(still)  # a job that is there is still taken off the queue
        assert queue.count == 0
        redis.close()
