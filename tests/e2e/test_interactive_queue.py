"""Interactive calls do not wait behind edits: generate, export and a one-record verify
go to the interactive queue, which a worker started with ZEROUNLEARN_WORKER_QUEUES=
interactive serves while the other worker is busy with a forget.

Real Redis (a database of its own), `python -m app`, two `python -m worker` processes,
the tiny GPT-2. The forget is kept busy for COALESCE_S by its coalescing window (the
worker holds the job, as with a long edit), so the overlap does not depend on how fast
this machine edits. The measured waits are printed (pytest -s) for the README.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from app.queue import JobQueue, interactive_job
from app.settings import Settings
from tests.support import processes
from tests.support.live import records
from tests.support.processes import ServiceStack

COALESCE_S = 12.0
"""How long the forget keeps its worker busy before it even edits."""


def test_short_jobs_are_routed_to_the_interactive_queue(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    assert interactive_job("generate") and interactive_job("export")
    assert interactive_job("verify", 1) and not interactive_job("verify", 2)
    assert not interactive_job("forget", 1) and not interactive_job("prepare")
    queue = JobQueue(redis, Settings(redis_url=redis_url, data_dir=tmp_path))
    queue.enqueue("export", "j-0000000000000001", "m-0123456789ab", "v0")
    queue.enqueue("verify", "j-0000000000000002", "m", "v1", "@", None, {},
                  interactive=True)
    queue.enqueue("forget", "j-0000000000000003", "m", "v0", "@", None, {})
    assert queue.interactive.name == "zerounlearn-cpu-interactive"
    assert queue.interactive.get_job_ids() == ["j-0000000000000001", "j-0000000000000002"]
    assert queue.queue.get_job_ids() == ["j-0000000000000003"]
    assert sorted(queue.queued_ids()) == [f"j-000000000000000{i}" for i in (1, 2, 3)]


def test_worker_queue_setting() -> None:
    from worker.settings import SettingsError, WorkerSettings

    env = {"REDIS_URL": "redis://x"}
    assert WorkerSettings.from_env(env).listen_queues == [
        "zerounlearn-cpu-interactive", "zerounlearn-cpu"]
    only = WorkerSettings.from_env({**env, "ZEROUNLEARN_WORKER_QUEUES": "interactive"})
    assert only.listen_queues == ["zerounlearn-cpu-interactive"]
    edits = WorkerSettings.from_env({**env, "ZEROUNLEARN_WORKER_QUEUES": "edits"})
    assert edits.listen_queues == ["zerounlearn-cpu"]
    with pytest.raises(SettingsError, match="ZEROUNLEARN_WORKER_QUEUES"):
        WorkerSettings.from_env({**env, "ZEROUNLEARN_WORKER_QUEUES": "gpu"})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Iterator[ServiceStack]:
    root = tmp_path_factory.mktemp("interactive")
    with processes.service_stack(root, db_name="interactive-stack",
                                 ZEROUNLEARN_COALESCE_WINDOW_S=str(COALESCE_S)) as stack:
        yield stack


@pytest.fixture(scope="module")
def model(stack: ServiceStack, tiny_gpt2_dir: Path) -> dict[str, Any]:
    return processes.register_ready(stack.client, str(tiny_gpt2_dir), "tiny")


def _timed_generate(c: httpx.Client, mid: str, version: str) -> float:
    began = time.monotonic()
    response = c.post(f"/v1/models/{mid}/versions/{version}/generate",
                      json={"prompt": records(3)[0]["prompt"], "max_new_tokens": 4})
    assert response.status_code == 200, response.text
    return time.monotonic() - began


def _busy_forget(c: httpx.Client, mid: str, person: int) -> str:
    """Submit a 20-record forget; return its id once a worker runs it."""
    response = c.post(f"/v1/models/{mid}/forget", json={"records": records(person, 20)})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    processes.wait_until(lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] == "running",
                         30, 0.1, "the forget running")
    return job_id


def test_generate_and_export_answer_while_a_forget_runs(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    c, mid = stack.client, model["id"]
    interactive = processes.start_worker(
        stack.redis_url, stack.data_dir, stack.log_dir, name="test-interactive",
        env={"ZEROUNLEARN_WORKER_QUEUES": "interactive"})
    try:
        workers = c.get("/readyz").json()["checks"]["workers"]
        assert workers == {"alive": 1, "interactive": 2}, workers
        _timed_generate(c, mid, "v0")  # loads the model in one of the workers
        _timed_generate(c, mid, "v0")
        job_id = _busy_forget(c, mid, 0)
        waits = [_timed_generate(c, mid, "v0") for _ in range(3)]
        export = c.post(f"/v1/models/{mid}/versions/v0/export")
        assert export.status_code == 202, export.text
        exported = processes.wait_job(c, export.json()["job_id"], timeout=COALESCE_S)
        # all of it while the edit still held the other worker (so the interactive one
        # answered)
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        assert exported["status"] == "succeeded", exported
        assert max(waits) < COALESCE_S / 2, waits
        print(f"\ngenerate while a forget runs, interactive worker: "
              f"{', '.join(f'{w:.2f}' for w in waits)} s")
        forget = processes.wait_job(c, job_id, timeout=300)
        assert forget["status"] == "succeeded", forget
    finally:
        interactive.stop()

    # without the interactive worker, the same generate waits for the edit to end
    version = c.get(f"/v1/models/{mid}").json()["active_version"]
    job_id = _busy_forget(c, mid, 20)
    wait = _timed_generate(c, mid, version)
    assert c.get(f"/v1/jobs/{job_id}").json()["status"] != "running"
    print(f"generate while a forget runs, one worker: {wait:.2f} s")
    assert wait > max(waits)
