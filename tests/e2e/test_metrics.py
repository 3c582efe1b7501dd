"""/metrics parsed with prometheus_client's own parser, and the JSON logs, on a live
service (API + worker started with ZEROUNLEARN_LOG_FORMAT=json); the job metrics with
many jobs stored (a scrape reads no job document), on a local and an S3 store."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics_jobs import JobTally
from app.observability import ServiceCollector
from app.queue import JobQueue, connect_redis
from app.settings import Settings
from client import NotFound
from store import ArtifactStore
from tests.support.counting import counting_backend
from tests.support.live import LiveService, records
from tests.support.processes import wait_until
from tests.support.tiny_model import TINY_REQUEST_HPARAMS

pytestmark = pytest.mark.timeout(600)
MODEL = "m-0123456789ab"


def scrape(url: str) -> dict[str, list]:
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def value(samples: list, name: str, **labels: str) -> float:
    found = [s.value for s in samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, f"no {name} {labels}"
    return sum(found)


def test_metrics_after_a_forget_job(live: LiveService) -> None:
    mid = live.model["id"]
    with live.client() as api:
        job = api.wait_job(api.forget(mid, records(40), hparams=TINY_REQUEST_HPARAMS)["job_id"],
                           timeout=300)
        api.get_model(mid)
        with pytest.raises(NotFound):
            api.get_model("m-000000000000")

    def counted() -> bool:  # job metrics are refreshed every few seconds (app.metrics_jobs)
        jobs = scrape(live.url).get("zerounlearn_jobs", [])
        return any(s.labels.get("kind") == "forget" and s.labels.get("status") == "succeeded"
                   and s.value >= 1 for s in jobs)

    wait_until(counted, 30, 0.5, "the forget job counted in /metrics")
    families = scrape(live.url)

    http = families["zerounlearn_http_requests"]
    assert value(http, "zerounlearn_http_requests_total", route="/v1/models/{model_id}",
                 status="200") >= 1
    assert value(http, "zerounlearn_http_requests_total", route="/v1/models/{model_id}",
                 status="404") >= 1
    assert value(http, "zerounlearn_http_requests_total", method="POST",
                 route="/v1/models/{model_id}/forget", status="202") >= 1
    assert not any(mid in s.labels.get("route", "") for s in http)  # templates, not paths

    jobs = families["zerounlearn_jobs"]
    assert value(jobs, "zerounlearn_jobs", kind="forget", status="succeeded") >= 1
    assert value(jobs, "zerounlearn_jobs", kind="prepare", status="succeeded") == 1
    phases = families["zerounlearn_job_phase_duration_seconds"]
    assert {s.labels["phase"] for s in phases if s.labels.get("kind") == "forget"} >= {
        *job["timings"]}
    assert value(phases, "zerounlearn_job_phase_duration_seconds_count", kind="forget",
                 phase="solve") >= 1
    assert value(families["zerounlearn_job_duration_seconds"],
                 "zerounlearn_job_duration_seconds_count", kind="forget", status="succeeded") >= 1
    assert value(families["zerounlearn_queue_depth"], "zerounlearn_queue_depth",
                 queue="zerounlearn-cpu") == 0
    assert value(families["zerounlearn_workers_alive"], "zerounlearn_workers_alive") == 1
    assert value(families["zerounlearn_redis_up"], "zerounlearn_redis_up") == 1

    def resident() -> bool:  # the worker publishes every few seconds
        fams = scrape(live.url)["zerounlearn_models_resident"]
        return any(s.labels.get("model") == mid and s.value >= 1 for s in fams)

    wait_until(resident, 30, 0.5, "the tiny model reported resident")


def test_json_logs_carry_ids_and_never_request_text(live: LiveService) -> None:
    secret = records(41)[0]
    with live.client() as api:
        accepted = api.forget(live.model["id"], [secret], hparams=TINY_REQUEST_HPARAMS)
        api.wait_job(accepted["job_id"], timeout=300)
    api_lines = live.stack.api.log_path.read_text().splitlines()
    worker_lines = live.stack.worker.log_path.read_text().splitlines()
    parsed = []
    for line in api_lines + worker_lines:
        if line.strip():
            parsed.append(json.loads(line))  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "service"} <= set(p) for p in parsed)
    assert any(p["service"] == "api" and p.get("request_id") and accepted["job_id"]
               in p["message"] for p in parsed)
    assert any(p["service"] == "worker" and p.get("job_id") == accepted["job_id"]
               for p in parsed)
    text = "\n".join(api_lines + worker_lines)
    # the worker's resident-model publisher never disturbs RQ's blocking dequeue
    assert "could not connect to Redis" not in text
    for needle in (secret["prompt"], secret["neighbors"][0]["prompt"]):
        assert needle not in text
    # the answer is a 4-digit code: look for it as a number of its own, not inside the
    # hex of a job id or a hash (CI once found "9982" in "...3a374601c09982e1f")
    answer = re.escape(secret["answer"].strip())
    assert not re.search(rf"(?<![0-9A-Za-z.]){answer}(?![0-9A-Za-z.])", text)
    response = httpx.get(f"{live.url}/healthz", headers={"X-Request-ID": "probe-123"})
    assert response.headers["x-request-id"] == "probe-123"


def parse(registry: CollectorRegistry) -> dict[str, list]:
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_scrape_reads_no_job_document_and_a_refresh_only_what_changed(
    kind: str, tmp_path: Path, redis_url: str, request: pytest.FixtureRequest
) -> None:
    """Many jobs stored: a scrape reads none of them; the background refresh reads the
    history once, then only the documents that changed; the figures are the full read's."""
    values: dict = {"redis_url": redis_url, "data_dir": tmp_path / "data"}
    settings = Settings(**values)
    backend = counting_backend(kind, settings.data_dir, request, counted=("jobs/",))
    store = ArtifactStore(settings.data_dir, backend)
    n = {"local": 400, "s3": 60}[kind]  # moto serves one request at a time
    ids = [store.create_job({"kind": "forget", "model_id": MODEL})["id"] for _ in range(n)]
    for i, job_id in enumerate(ids[: n // 2]):  # half ended, half still queued
        store.transition_job(job_id, ["queued"], "running")
        store.transition_job(job_id, ["running"], "succeeded" if i % 4 else "failed",
                             timings={"solve": 0.2 * (i % 10), "verify": 0.05})
    redis = connect_redis(settings)
    tally = JobTally(store, refresh_s=3600)
    registry = CollectorRegistry()
    registry.register(ServiceCollector(store, JobQueue(redis, settings), tally))

    backend.reads = 0
    assert "zerounlearn_jobs" not in parse(registry)  # no figures before a refresh
    # what the thread does at start-up: the history, once (rows of the jobs table)
    assert tally.refresh().read == n
    backend.reads = 0
    for _ in range(5):
        families = parse(registry)
    assert backend.reads == 0  # scrapes read no job document
    assert tally.refresh().read == 0 and backend.reads == 0  # nothing changed

    # truthful: the figures a full read gives (what a scrape used to compute)
    def check(families: dict[str, list]) -> None:
        jobs = store.list_jobs()
        truth = Counter((j["kind"], j["status"]) for j in jobs)
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            assert value(families["zerounlearn_jobs"], "zerounlearn_jobs", kind="forget",
                         status=status) == truth[("forget", status)], status
        solve = [j["timings"]["solve"] for j in jobs if j.get("timings")]
        phases = families["zerounlearn_job_phase_duration_seconds"]
        assert value(phases, "zerounlearn_job_phase_duration_seconds_count",
                     kind="forget", phase="solve") == len(solve)
        assert value(phases, "zerounlearn_job_phase_duration_seconds_bucket", kind="forget",
                     phase="solve", le="0.5") == sum(s <= 0.5 for s in solve)
        assert value(phases, "zerounlearn_job_phase_duration_seconds_sum", kind="forget",
                     phase="solve") == pytest.approx(sum(solve))
        ended = families["zerounlearn_job_duration_seconds"]
        assert value(ended, "zerounlearn_job_duration_seconds_count", kind="forget",
                     status="failed") == truth[("forget", "failed")]

    check(families)
    help_text = generate_latest(registry).decode()
    assert "# HELP zerounlearn_jobs Jobs by kind and status; from the store" in help_text
    assert "never shown more than 60 s stale" in help_text
    assert value(families["zerounlearn_job_metrics_age_seconds"],
                 "zerounlearn_job_metrics_age_seconds") < 60

    # jobs move on: a refresh reads exactly the changed and the new documents
    store.transition_job(ids[-1], ["queued"], "cancelled")
    store.transition_job(ids[-2], ["queued"], "running")
    store.transition_job(ids[-2], ["running"], "succeeded", timings={"solve": 3.0})
    store.create_job({"kind": "forget", "model_id": MODEL})
    backend.reads = 0
    stats = tally.refresh()
    assert stats.read == 3 and stats.jobs == n + 1
    check(parse(registry))
    redis.close()
