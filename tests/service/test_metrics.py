"""/metrics parsed with prometheus_client's own parser, and the JSON logs, on a live
service (API + worker started with ZEROUNLEARN_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import NotFound
from tests.support.live import LiveService, records
from tests.support.processes import wait_until
from tests.support.tiny_model import TINY_HPARAMS

pytestmark = pytest.mark.timeout(600)


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
        job = api.wait_job(api.forget(mid, records(40), hparams=TINY_HPARAMS)["job_id"],
                           timeout=300)
        api.get_model(mid)
        with pytest.raises(NotFound):
            api.get_model("m-000000000000")
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
        accepted = api.forget(live.model["id"], [secret], hparams=TINY_HPARAMS)
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
