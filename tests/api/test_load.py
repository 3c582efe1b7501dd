"""Load: 200 concurrent forget submissions from 20 client threads against one real API
process (uvicorn), its own Redis db, no worker. Every submission gets exactly one job: 200
distinct jobs in the store, 200 entries in the queue, 200 durable requests, 200 audit
entries; retries with the same Idempotency-Key get the same job. p50/p99 are printed,
not asserted (shared CI machines)."""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from store import ArtifactStore
from tests.support import processes
from tests.support.redis_dbs import redis_db

pytestmark = pytest.mark.timeout(300)
CLIENTS = 20
PER_CLIENT = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_200_concurrent_submissions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2}
    (model_dir / "config.json").write_text(json.dumps(config))
    data_dir = tmp_path / "data"
    with redis_db("load-api") as url:
        api = processes.start_api(url, data_dir, tmp_path / "logs",
                                  **processes.api_defaults(tmp_path))
        try:
            headers = processes.auth_headers()
            base_url = api.extra["url"]
            created = httpx.post(f"{base_url}/v1/models", headers=headers,
                                 json={"name": "load", "source": str(model_dir)})
            assert created.status_code == 201, created.text
            mid = created.json()["id"]
            store = ArtifactStore(data_dir)
            store.update_model(mid, status="ready")  # no worker runs here

            results: list[tuple[str, int, str, float]] = []  # key, status, job, seconds
            retries: list[tuple[str, str]] = []  # job of the first send, job of the retry
            health: list[float] = []
            lock = threading.Lock()
            stop = threading.Event()

            def client(n: int) -> None:
                with httpx.Client(base_url=base_url, headers=headers, timeout=60) as c:
                    for i in range(PER_CLIENT):
                        key = f"client{n}-req{i}"
                        body = {"records": [{"prompt": f"The code of person {n} is",
                                             "answer": f" {i}"}]}
                        start = time.perf_counter()
                        r = c.post(f"/v1/models/{mid}/forget", json=body,
                                   headers={"Idempotency-Key": key})
                        took = time.perf_counter() - start
                        job = r.json().get("job_id", "") if r.status_code == 202 else ""
                        with lock:
                            results.append((key, r.status_code, job, took))
                        if i == 0:  # a client retry after a lost answer
                            again = c.post(f"/v1/models/{mid}/forget", json=body,
                                           headers={"Idempotency-Key": key})
                            with lock:
                                retries.append((job, again.json().get("job_id", "")))

            def probe() -> None:
                with httpx.Client(base_url=base_url, timeout=60) as c:
                    while not stop.is_set():
                        start = time.perf_counter()
                        c.get("/healthz")
                        health.append(time.perf_counter() - start)
                        stop.wait(0.05)

            threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
            prober = threading.Thread(target=probe)
            began = time.perf_counter()
            prober.start()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - began
            stop.set()
            prober.join()

            assert len(results) == CLIENTS * PER_CLIENT
            assert {status for _, status, _, _ in results} == {202}
            jobs = {job for _, _, job, _ in results}
            assert len(jobs) == CLIENTS * PER_CLIENT  # one job each, none shared
            assert all(first == again for first, again in retries) and len(retries) == CLIENTS
            stored = {j["id"] for j in store.list_jobs() if j["kind"] == "forget"}
            assert stored == jobs
            assert {r["job_id"] for r in store.requests.list() if r["kind"] == "forget"} == jobs
            conn = Redis.from_url(url)
            try:
                queued = {i.decode() for i in conn.lrange("rq:queue:zerounlearn-cpu", 0, -1)}
            finally:
                conn.close()
            assert jobs <= queued and len(queued) == len(jobs) + 1  # + the prepare job
            entries, _ = store.audit.page(0, 10_000)
            accepted = [e["ids"]["job"] for e in entries if e["action"] == "request.accepted"]
            assert sorted(accepted) == sorted(jobs | {created.json()["prepare_job_id"]})
            assert store.audit.verify()["valid"] is True

            latencies = [took for *_, took in results]
            with capsys.disabled():
                print(
                    f"\n[load] {len(results)} submissions from {CLIENTS} clients in {wall:.1f} s:"
                    f" p50 {1000 * statistics.median(latencies):.0f} ms,"
                    f" p99 {1000 * percentile(latencies, 0.99):.0f} ms,"
                    f" max {1000 * max(latencies):.0f} ms; /healthz during the load:"
                    f" p50 {1000 * statistics.median(health):.0f} ms,"
                    f" max {1000 * max(health):.0f} ms"
                )
        finally:
            api.stop()
