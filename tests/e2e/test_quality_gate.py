"""Nothing unsafe goes live (issue 11, part 1): the quality gate and the hyper-parameter
bounds.

First the gate's parts on their own (settings, limits, judging, guard facts); then real
processes on a Redis db of their own: `python -m app`, `python -m worker` and the tiny GPT-2. An
in-range but harmful edit (gradient ascent at its largest learning rate, no early stop)
is stopped: no version, the active version and its output unchanged, the job failed with
`quality_gate_failed` and the figures, a callback, an audit entry. The door refuses the
issue's hyper-parameter combination, statistics settings and layers the model lacks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings, SettingsError, load_settings
from tests.support import processes
from tests.support.live import records
from tests.support.processes import ServiceStack
from tests.support.receiver import Receiver
from tests.support.tiny_model import TINY_REQUEST_HPARAMS
from worker import gate
from worker.errors import InvalidRequest, error_document
from worker.settings import GATE_DEFAULTS, GATE_LIMITS, WorkerSettings
from worker.settings import SettingsError as WorkerSettingsError
from zerounlearn.config import HPARAMS_CLASSES, resolve_config
from zerounlearn.errors import InvalidHyperParameters
from zerounlearn.records import validate_records

pytestmark = pytest.mark.timeout(900)
DANGEROUS = {"reg_lambda": 1e-300, "corpus_weight": 0, "preserve_weight": 0,
             "forget_weight": 1e9, "clamp": 1e9, "max_rounds": 1}
"""The issue's combination: it published a version with perplexity 3.7e10."""
HARMFUL = {"layers": [1], "lr": 0.1, "steps": 50, "stop_when_forgotten": False}
"""Gradient ascent within every bound that still wrecks the tiny model (all neighbours
lost; measured before the gate existed)."""
REDIS = "redis://h:6379/0"


# ------------------------------------------------------------ the parts alone
def test_api_and_worker_share_the_gate_defaults_and_limits(tmp_path: Path) -> None:
    api = Settings(data_dir=tmp_path)
    assert api.gate_defaults == GATE_DEFAULTS and api.gate_limits == GATE_LIMITS
    worker = WorkerSettings.from_env({"REDIS_URL": REDIS})
    assert dict(worker.gate) == GATE_DEFAULTS and dict(worker.gate_limits) == GATE_LIMITS
    assert all(GATE_DEFAULTS[k] <= GATE_LIMITS[k] for k in GATE_DEFAULTS)


def test_gate_settings_are_validated(tmp_path: Path) -> None:
    tight = WorkerSettings.from_env({"REDIS_URL": REDIS, "ZEROUNLEARN_GATE_MAX_EFFICACY": "20"})
    assert tight.gate["max_efficacy"] == 20.0
    for env in ({"ZEROUNLEARN_GATE_MAX_GUARD_DROP": "60"},  # above its limit (50)
                {"ZEROUNLEARN_GATE_MAX_EFFICACY": "nan"},
                {"ZEROUNLEARN_GATE_LIMIT_MAX_NEIGHBOR_DROP": "101"},
                {"ZEROUNLEARN_GATE_MAX_PERPLEXITY_INCREASE": "-1"}):
        with pytest.raises(WorkerSettingsError, match="ZEROUNLEARN_GATE_"):
            WorkerSettings.from_env({"REDIS_URL": REDIS, **env})
    with pytest.raises(SettingsError, match="GATE_LIMIT_MAX_GUARD_DROP"):
        load_settings(data_dir=tmp_path, gate_max_guard_drop=60)
    with pytest.raises(SettingsError, match="GATE_MAX_EFFICACY"):
        load_settings(data_dir=tmp_path, gate_max_efficacy=math.inf)


def test_request_limits_are_finite_and_within_the_server_limits() -> None:
    settings = WorkerSettings(redis_url="", data_dir=Path("data"))
    assert gate.gate_limits(settings, None) == GATE_DEFAULTS
    assert gate.gate_limits(settings, {"max_efficacy": 0})["max_efficacy"] == 0.0
    for bad in ({"max_efficacy": 101}, {"max_guard_drop": 51}, {"bogus": 1},
                {"max_efficacy": True}, {"max_efficacy": math.nan},
                {"max_perplexity_increase": math.inf}, {"max_neighbor_drop": -1}, [1]):
        with pytest.raises(InvalidRequest):
            gate.gate_limits(settings, bad)  # type: ignore[arg-type]


def summary(ppl: float | None, efficacy: float) -> dict[str, Any]:
    return {"perplexity": ppl, "efficacy": efficacy}


def test_judge_stops_the_issues_version_with_numbers_only() -> None:
    figures = gate.judge(GATE_DEFAULTS, summary(18.74, 100.0), summary(3.7e10, 0.0),
                         ([True] * 4, [True] * 4), ([True] * 30, [False] * 30))
    checks = figures["checks"]
    assert figures["passed"] is False
    assert checks["perplexity"]["passed"] is False and checks["perplexity"]["increase_pct"] > 1e10
    assert checks["guard"] == {"count": 30, "parent": 100.0, "version": 0.0, "drop": 100.0,
                               "limit": 25.0, "passed": False}
    assert checks["neighbors"]["passed"] and checks["efficacy"]["passed"]
    error = error_document(gate.failure(figures))
    assert error["code"] == "quality_gate_failed" and error["quality_gate"] == figures
    assert "perplexity +" in error["message"] and "guard facts -100 points" in error["message"]
    assert "no version was published" in error["message"]
    json.dumps(error, allow_nan=False)  # storable as is


def test_judge_edge_cases() -> None:
    ok = gate.judge(GATE_DEFAULTS, summary(20.0, 100.0), summary(21.0, 0.0), ([], []), ([], []))
    assert ok["passed"] is True  # +5%, nothing else to measure
    assert ok["checks"]["neighbors"]["drop"] is None and ok["checks"]["guard"]["count"] == 0
    broken = gate.judge(GATE_DEFAULTS, summary(20.0, 0.0), summary(None, 0.0), ([], []), ([], []))
    assert broken["passed"] is False and broken["checks"]["perplexity"]["increase_pct"] is None
    kept = gate.judge(GATE_DEFAULTS, summary(20.0, 100.0), summary(20.0, 60.0), ([], []), ([], []))
    assert kept["passed"] is False and kept["checks"]["efficacy"]["version"] == 60.0
    assert "60% of the records still reproduced" in str(gate.failure(kept))


def test_guard_facts_of_the_builtin_model(tmp_path: Path) -> None:
    from worker.context import WorkerContext

    ctx = WorkerContext.from_settings(WorkerSettings(redis_url="", data_dir=tmp_path))
    builtin = ctx.store.create_model({"name": "b", "source": gate.BUILTIN_SMOLLM2})
    other = ctx.store.create_model({"name": "o", "source": str(tmp_path)})
    facts = gate.guard_facts(ctx, builtin)  # no retain bank yet: the packaged sample
    assert len(facts) == gate.GUARD_COUNT and facts == gate.guard_facts(ctx, builtin)
    assert all(set(f) == {"prompt", "answer"} for f in facts)
    from zerounlearn.datasets import world_facts

    relation = {f["prompt"]: f["relation"] for f in world_facts()}
    assert len({relation[f["prompt"]] for f in facts}) == 6  # every relation
    assert gate.guard_facts(ctx, other) == []
    request = validate_records([
        {"prompt": "The capital of France is", "subject": "France", "answer": " Paris"},
        {"prompt": facts[1]["prompt"], "answer": facts[1]["answer"]},
    ])
    left = gate.unrelated(facts, request)
    assert facts[1] not in left and all("France" not in f["prompt"] for f in left)
    assert len(left) >= len(facts) - 3


def test_neighbours_that_are_forget_prompts_do_not_count() -> None:
    recs = validate_records([
        {"prompt": "A is", "answer": " 1", "neighbors": [{"prompt": "B is", "answer": " 2"},
                                                         {"prompt": "C is", "answer": " 3"}]},
        {"prompt": "B is", "answer": " 2"},
    ])
    evaluation = {"records": [{"neighbors_reproduced": [False, True]},
                              {"neighbors_reproduced": []}]}
    assert gate.neighbor_flags(recs, evaluation) == [True]  # "B is" is being forgotten


def documented_ranges() -> list[tuple[str, str, float, float]]:
    """(name, "[" or "(", lo, hi) of each numeric row of the README's range table."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Hyper-parameter ranges", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        match = re.fullmatch(r"([\[(])([-\d.e+]+), ([-\d.e+]+)\]", cells[2]) if len(
            cells) == 4 else None
        if match:
            rows.append((cells[0].strip("`"), match[1], float(match[2]), float(match[3])))
    return rows


def test_the_readme_ranges_are_the_engines() -> None:
    """Each documented range holds in the engine: its ends are accepted, just past them
    is refused (the API checks the same through zerounlearn.config)."""
    rows = documented_ranges()
    assert len(rows) >= 30
    documented = {name for name, *_ in rows}
    numeric = set()
    for cls in HPARAMS_CLASSES.values():
        hints = typing.get_type_hints(cls)
        numeric |= {n for n, h in hints.items() if h in (int, float)}
    assert numeric - documented <= {"stats_samples", "stats_seq_len"}, numeric - documented
    for name, bracket, lo, hi in rows:
        method = next(m for m, cls in HPARAMS_CLASSES.items()
                      if name in {f.name for f in dataclasses.fields(cls)})
        kind = typing.get_type_hints(HPARAMS_CLASSES[method])[name]
        up, down = (1.0, 1.0) if kind is int else (max(abs(hi) * 1e-3, 1e-9),
                                                   max(abs(lo) * 1e-3, 1e-9))
        ok = [hi] if bracket == "(" else [lo, hi]
        bad = [hi + up, lo - down] + ([lo] if bracket == "(" else [])
        for value in ok:
            resolve_config(method, None, {name: kind(value)})
        for value in bad:
            with pytest.raises(InvalidHyperParameters, match=name):
                resolve_config(method, None, {name: kind(value)})


# ------------------------------------------------------------ real processes
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    with processes.service_stack(tmp_path_factory.mktemp("gate"), db_name="gate-stack") as s:
        yield s


@pytest.fixture(scope="module")
def model(stack: ServiceStack, tiny_gpt2_dir: Path) -> dict[str, Any]:
    ready = processes.register_ready(stack.client, str(tiny_gpt2_dir))
    assert ready["num_layers"] == 2, ready
    return ready


@pytest.fixture(scope="module")
def operator(stack: ServiceStack) -> dict[str, str]:
    created = stack.client.post("/v1/keys", json={"role": "operator"})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def forget_jobs(stack: ServiceStack) -> int:
    return sum(j["kind"] == "forget" for j in stack.client.get("/v1/jobs").json())


def test_the_door_refuses_the_issues_combination(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    url = f"/v1/models/{model['id']}/forget"
    for method in ("zerounlearn", "zerounlearn-paper", "zerounlearn-gd"):
        body = {"records": records(0), "method": method, "hparams": DANGEROUS}
        error = error_of(stack.client.post(url, json=body), 422)
        assert error["code"] == "invalid_input"
        for name in ("reg_lambda", "corpus_weight", "forget_weight", "clamp"):
            assert f"hparams.{name}" in error["message"], (method, name)
        assert "preserve_weight" not in error["message"]  # 0 is the paper's value
    one = error_of(stack.client.post(url, json={"records": records(0),
                                                "hparams": {"reg_lambda": 1e-300}}), 422)
    assert "reg_lambda" in one["message"]
    ga = {"records": records(0), "method": "gradient-ascent", "hparams": {"lr": 1.0}}
    assert "hparams.lr" in error_of(stack.client.post(url, json=ga), 422)["message"]
    assert forget_jobs(stack) == 0


def test_statistics_settings_are_server_only(stack: ServiceStack, model: dict[str, Any]) -> None:
    url = f"/v1/models/{model['id']}/forget"
    for name, value in (("stats_samples", 10_000_000), ("stats_seq_len", 16),
                        ("stats_files", ["/etc/passwd"])):
        body = {"records": records(0), "hparams": {name: value}}
        error = error_of(stack.client.post(url, json=body), 422)
        assert name in error["message"] and "server setting" in error["message"]
    assert forget_jobs(stack) == 0


def test_layers_the_model_lacks_are_refused(
    stack: ServiceStack, model: dict[str, Any], tiny_gpt2_dir: Path
) -> None:
    url = f"/v1/models/{model['id']}/forget"
    body = {"records": records(0), "hparams": {**TINY_REQUEST_HPARAMS, "layers": [1, 2]}}
    error = error_of(stack.client.post(url, json=body), 422)
    assert error["code"] == "layer_out_of_range" and "hparams.layers[1]" in error["message"]
    body = {"records": records(0), "hparams": {**TINY_REQUEST_HPARAMS, "retry_layers": [0, 2]}}
    error = error_of(stack.client.post(url, json=body), 422)
    assert error["code"] == "layer_out_of_range"
    assert "hparams.retry_layers[1]" in error["message"]
    assert forget_jobs(stack) == 0
    for source, layers in (("builtin:smollm2-135m-instruct", [29, 30]),
                           (str(tiny_gpt2_dir), [0, 2])):
        register = {"name": "x", "source": source, "edit_layers": layers}
        error = error_of(stack.client.post("/v1/models", json=register), 422)
        assert error["code"] == "layer_out_of_range" and "edit_layers[1]" in error["message"]
    assert [m["id"] for m in stack.client.get("/v1/models").json()] == [model["id"]]


def test_gate_values_are_checked_and_only_an_admin_loosens(
    stack: ServiceStack, model: dict[str, Any], operator: dict[str, str]
) -> None:
    url = f"/v1/models/{model['id']}/forget"
    headers = {"content-type": "application/json"}
    for gate_body in ('{"max_neighbor_drop": 1e999}', '{"max_neighbor_drop": NaN}',
                      '{"max_neighbor_drop": -1}', '{"max_efficacy": 101}', '{"strict": true}'):
        raw = f'{{"records": {json.dumps(records(0))}, "quality_gate": {gate_body}}}'
        error = error_of(stack.client.post(url, content=raw, headers=headers), 422)
        assert "quality_gate" in error["message"], gate_body
    looser = {"records": records(0), "quality_gate": {"max_neighbor_drop": 80}}
    error = error_of(stack.client.post(url, json=looser, headers=operator), 403)
    assert "admin" in error["message"]
    past_limit = {"records": records(0), "quality_gate": {"max_guard_drop": 60}}
    assert "limit" in error_of(stack.client.post(url, json=past_limit), 422)["message"]
    assert forget_jobs(stack) == 0


def texts_of(request: list[dict[str, Any]]) -> list[str]:
    """Prompts and the answers that are words (secret codes are numbers, which figures
    could contain by chance)."""
    out = []
    for record in request:
        for fact in [record, *record.get("neighbors", [])]:
            out.append(fact["prompt"])
            if not fact["answer"].strip().isdigit():
                out.append(fact["answer"].strip())
    return out


def outputs(stack: ServiceStack, mid: str, version: str, prompts: list[str]) -> list[str]:
    texts = []
    for prompt in prompts:
        response = stack.client.post(f"/v1/models/{mid}/versions/{version}/generate",
                                     json={"prompt": prompt, "max_new_tokens": 6})
        assert response.status_code == 200, response.text
        texts.append(response.json()["text"])
    return texts


def test_the_gate_stops_a_harmful_edit(stack: ServiceStack, model: dict[str, Any]) -> None:
    c, mid = stack.client, model["id"]
    request = records(0, 5)
    prompts = [r["prompt"] for r in request] + [n["prompt"] for n in request[0]["neighbors"]]
    before = outputs(stack, mid, "v0", prompts)  # the worker now holds v0 resident
    receiver = Receiver()
    try:
        body = {"records": request, "method": "gradient-ascent", "hparams": HARMFUL,
                "callback_url": receiver.url}
        response = c.post(f"/v1/models/{mid}/forget", json=body)
        assert response.status_code == 202, response.text
        job = processes.wait_job(c, response.json()["job_id"])
        processes.wait_until(lambda: len(receiver.bodies) >= 1, 30, 0.1, "the callback")
    finally:
        receiver.close()

    # the job failed with the code and the measured figures, in numbers only
    assert job["status"] == "failed", job
    error = job["error"]
    assert error["code"] == "quality_gate_failed", error
    neighbors = error["quality_gate"]["checks"]["neighbors"]
    assert neighbors["parent"] == 100.0 and neighbors["version"] == 0.0  # it WAS harmful
    assert neighbors["drop"] == 100.0 and neighbors["passed"] is False
    assert "neighbours -100 points" in error["message"]
    assert set(error["quality_gate"]["checks"]) == {"perplexity", "efficacy", "neighbors", "guard"}
    for text in texts_of(request):
        assert text not in json.dumps(job)

    # nothing went live: no version, v0 still active, the same output
    assert [v["id"] for v in c.get(f"/v1/models/{mid}/versions").json()] == ["v0"]
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == "v0"
    assert outputs(stack, mid, "v0", prompts) == before

    # the callback and the audit trail say so
    (delivered,) = receiver.bodies
    assert delivered["status"] == "failed" and delivered["version"] is None
    assert delivered["error"]["code"] == "quality_gate_failed"
    entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    stopped = [e for e in entries if e["action"] == "quality_gate.failed"]
    assert len(stopped) == 1 and stopped[0]["ids"]["job"] == job["id"]
    assert stopped[0]["detail"]["checks"]["neighbors"]["drop"] == 100.0
    assert len(stopped[0]["record_hashes"]) == 5
    failed = [e for e in entries if e["action"] == "job.failed" and e["ids"]["job"] == job["id"]]
    assert failed and failed[0]["detail"]["code"] == "quality_gate_failed"
    for text in texts_of(request):
        assert text not in json.dumps(entries)
    assert c.get("/v1/audit/verify").json()["valid"] is True


def test_a_request_may_tighten_the_gate(
    stack: ServiceStack, model: dict[str, Any], operator: dict[str, str]
) -> None:
    c, mid = stack.client, model["id"]
    request = records(0, 5)
    body = {"records": request, "hparams": TINY_REQUEST_HPARAMS,
            "quality_gate": {"max_neighbor_drop": 0}}
    response = c.post(f"/v1/models/{mid}/forget", json=body, headers=operator)
    assert response.status_code == 202, response.text  # tightening needs no admin
    job = processes.wait_job(c, response.json()["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "quality_gate_failed", job
    check = job["error"]["quality_gate"]["checks"]["neighbors"]
    assert check["limit"] == 0 and check["drop"] > 0 and check["passed"] is False
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == "v0"

    # the same edit under the server's gate goes live, with its figures
    response = c.post(f"/v1/models/{mid}/forget",
                      json={"records": request, "hparams": TINY_REQUEST_HPARAMS})
    job = processes.wait_job(c, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    figures = job["result"]["metrics"]["quality_gate"]
    assert figures["passed"] is True and figures["checks"]["neighbors"]["drop"] == check["drop"]
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == job["result"]["version"]


def test_an_admin_may_loosen_the_gate_within_the_limits_audited(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    """Loosened to its limit, the gate lets the harmful edit through (on the head the
    test above made: its neighbours fall 90 -> 0): the gate is what stops it. The last
    test of the module: the wrecked version stays active."""
    c, mid = stack.client, model["id"]
    body = {"records": records(0, 5), "method": "gradient-ascent", "hparams": HARMFUL,
            "quality_gate": {"max_neighbor_drop": 100}}
    response = c.post(f"/v1/models/{mid}/forget", json=body)
    assert response.status_code == 202, response.text
    job = processes.wait_job(c, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    neighbors = job["result"]["metrics"]["quality_gate"]["checks"]["neighbors"]
    assert neighbors["drop"] > GATE_DEFAULTS["max_neighbor_drop"] and neighbors["limit"] == 100
    entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    (loosened,) = [e for e in entries if e["action"] == "quality_gate.loosened"]
    assert loosened["ids"]["job"] == job["id"] and loosened["actor"] != "auth-disabled"
    assert loosened["detail"] == {
        "loosened": {"max_neighbor_drop": {"default": 50.0, "requested": 100.0}}}
