"""End to end with real parts: Redis, a `python -m worker` process, a `python -m app`
process spoken to over HTTP, and the tiny GPT-2 trained for the tests (a local HF dir).

register -> prepare -> forget 5 facts -> verify -> rollback -> generate -> export and
reload with transformers; then a cancelled queued job, and a worker killed mid-job.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests.support import processes
from tests.support.processes import ServiceStack
from tests.support.tiny_model import TINY_REQUEST_HPARAMS, tiny_facts
from worker.edit_lock import lock_key

FORGET_METHOD = "zerounlearn"
FORGET_HPARAMS: dict[str, Any] = TINY_REQUEST_HPARAMS  # the toy model needs its own settings
pytestmark = pytest.mark.timeout(900)
wait_job = processes.wait_job


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    with processes.service_stack(tmp_path_factory.mktemp("e2e"), db_name="e2e-stack") as s:
        yield s


def people() -> list[list[dict[str, str]]]:
    """tiny_facts() grouped by person: 50 lists of 4 facts (one per relation)."""
    facts = tiny_facts()
    return [facts[i : i + 4] for i in range(0, len(facts), 4)]


def forget_records() -> list[dict[str, Any]]:
    """Secret codes of people 0..4; neighbours: their city, another person's code.

    No subject: the toy model has 2 layers, and an edit of its last layer at the
    subject's token cannot reach the answer position (no attention layer follows).
    """
    groups = people()
    records = []
    for i in range(5):
        code, city = groups[i][0], groups[i][1]
        other = groups[20 + i][0]
        records.append(
            {
                "prompt": code["prompt"],
                "answer": code["answer"],
                "neighbors": [
                    {"prompt": city["prompt"], "answer": city["answer"]},
                    {"prompt": other["prompt"], "answer": other["answer"]},
                ],
            }
        )
    return records


def reference_texts() -> list[str]:
    """Kept facts as sentences: the tiny model knows no other English, so perplexity on
    the engine's default texts would say nothing about it."""
    return [f"{f['prompt']}{f['answer']}." for g in people()[40:50] for f in g]


@pytest.fixture(scope="module")
def model(stack: ServiceStack, tiny_gpt2_dir: Path) -> dict[str, Any]:
    response = stack.client.post(
        "/v1/models", json={"name": "tiny", "source": str(tiny_gpt2_dir)}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "preparing"
    ready = processes.wait_model_ready(stack.client, created["id"])
    assert ready["status"] == "ready", ready
    return ready


def test_full_flow(stack: ServiceStack, model: dict[str, Any]) -> None:
    c = stack.client
    mid = model["id"]
    assert model["architecture"] == "gpt2" and model["num_layers"] == 2
    assert model["edit_layers"] and model["active_version"] == "v0"
    prepare = c.get(f"/v1/jobs/{model['prepare_job_id']}").json()
    assert prepare["status"] == "succeeded" and prepare["progress"]["fraction"] == 1.0

    # forget 5 facts
    records = forget_records()
    body = {"records": records, "method": FORGET_METHOD, "hparams": FORGET_HPARAMS}
    response = c.post(f"/v1/models/{mid}/forget", json=body)
    assert response.status_code == 202, response.text
    job = wait_job(c, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["kind"] == "forget" and job["started_at"] and job["finished_at"]
    new = job["result"]["version"]
    assert new == "v1"
    assert job["result"]["metrics"]["after"]["efficacy"] == 0.0
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == "v1"

    manifest = c.get(f"/v1/models/{mid}/versions/{new}").json()
    assert manifest["parent"] == "v0" and manifest["method"] == FORGET_METHOD
    assert manifest["job_id"] == job["id"] and manifest["active"] is True
    assert [set(r) for r in manifest["records"]] == [{"sha256"}] * 5
    assert manifest["patch"]["bytes"] > 0 and len(manifest["patch"]["sha256"]) == 64
    assert manifest["patch"]["layers"] == FORGET_HPARAMS["layers"]  # the request overrides

    # verify: forgotten, neighbours kept
    check = {"records": records, "reference_texts": reference_texts()}
    response = c.post(f"/v1/models/{mid}/versions/{new}/verify", json=check)
    assert response.status_code == 202, response.text
    report = wait_job(c, response.json()["job_id"])
    assert report["status"] == "succeeded", report
    result = report["result"]
    assert result["passed"] is True, result["checks"]
    assert [r["forgotten"] for r in result["records"]] == [True] * 5
    assert all(r["before"]["reproduced"] for r in result["records"])
    assert result["summary"]["parent"]["efficacy"] == 100.0
    assert result["summary"]["version"]["efficacy"] == 0.0
    assert result["summary"]["version"]["specificity"] >= 80.0
    # probes: the parent gives the codes back to greedy generation, the version does not
    probes = result["probes"]
    assert set(probes["forgotten"]) == {"context", "chat", "greedy", "int8"}
    assert probes["forgotten"]["greedy"] == {"found": 0, "of": 5, "pct": 0.0}
    assert probes["forgotten"]["chat"]["pct"] is None  # the tiny model has no chat template
    assert probes["parent"]["found_pct"]["greedy"] == 100.0
    assert probes["parent"]["found_pct"]["int8"] == 100.0
    checks = {c["name"]: c for c in result["checks"]}
    assert {f"probe_{p}" for p in probes["forgotten"]} <= set(checks)
    assert checks["probe_greedy"]["threshold"] == 10.0 and checks["probe_greedy"]["passed"]
    assert all(set(r["probes"]["after"]) == set(probes["forgotten"])
               for r in result["records"])

    # generate: v1 no longer says the code, v0 (sealed: an admin's override) still does
    prompt, answer = records[0]["prompt"], records[0]["answer"]
    gen = {"prompt": prompt, "max_new_tokens": 8}
    override = {"override_seal_reason": "end-to-end test: compare with the base"}
    r1 = c.post(f"/v1/models/{mid}/versions/v1/generate", json=gen)
    assert c.post(f"/v1/models/{mid}/versions/v0/generate", json=gen).status_code == 409
    r0 = c.post(f"/v1/models/{mid}/versions/v0/generate", json=gen, params=override)
    assert r1.status_code == 200 and r0.status_code == 200, (r1.text, r0.text)
    assert r0.json()["text"].startswith(answer)
    assert not r1.json()["text"].startswith(answer)

    # rollback past the deletion: activate the (sealed) parent, an audited override
    response = c.post(f"/v1/models/{mid}/versions/v0/activate", params=override)
    assert response.status_code == 200, response.text
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == "v0"
    listed = {v["id"]: v["active"] for v in c.get(f"/v1/models/{mid}/versions").json()}
    assert listed == {"v0": True, "v1": False}

    # export v1 and reload it with transformers
    response = c.post(f"/v1/models/{mid}/versions/v1/export")
    assert response.status_code == 202, response.text
    exported = wait_job(c, response.json()["job_id"])
    assert exported["status"] == "succeeded", exported
    path = Path(exported["result"]["path"])
    assert path.is_dir() and path.is_relative_to(stack.data_dir)
    check_export_equals_materialised(stack.data_dir, mid, "v1", path, manifest["patch"]["layers"])

    assert_no_record_text(stack, records)


def check_export_equals_materialised(
    data_dir: Path, model_id: str, version: str, path: Path, layers: list[int]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from store import ArtifactStore
    from worker.model_cache import ModelCache

    torch.set_num_threads(1)
    reloaded = AutoModelForCausalLM.from_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(path))  # the tokenizer was exported too
    cache = ModelCache(ArtifactStore(data_dir), device="cpu", max_entries=2)
    edited = cache.get(model_id, version)
    base = cache.get(model_id, "v0")
    got, want = reloaded.state_dict(), edited.model.state_dict()
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key
    for layer in layers:
        assert not torch.equal(
            edited.adapter.get_weight(edited.model, layer),
            base.adapter.get_weight(base.model, layer),
        ), f"layer {layer} was not edited"


def assert_no_record_text(stack: ServiceStack, records: list[dict[str, Any]]) -> None:
    """No file of the store and no log line holds the forgotten facts' subjects.

    (Accepted requests are kept in the metadata database, their text sealed, until the
    retention period has passed: their purge is tested in test_trust_end_to_end.py.)
    """
    by_prompt = {f["prompt"]: f["subject"] for f in tiny_facts()}
    secrets = [by_prompt[r["prompt"]] for r in records]  # the people's names
    for file in stack.data_dir.rglob("*"):
        skipped = {"exports", "cache", "requests"}
        if not file.is_file() or skipped & set(file.relative_to(stack.data_dir).parts):
            continue
        data = file.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} found in {file}"
    logs = stack.logs()
    for secret in secrets:
        assert secret not in logs, f"{secret!r} found in the service logs"


SEALED_OK = {"override_seal_reason": "end-to-end test: a job to cancel"}
"""v0 is sealed once the forget above succeeded: these exports are an admin's override."""


def test_cancel_a_queued_job(stack: ServiceStack, model: dict[str, Any]) -> None:
    c = stack.client
    stack.worker.stop()  # nobody takes jobs now
    response = c.post(f"/v1/models/{model['id']}/versions/v0/export", params=SEALED_OK)
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    response = c.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"

    stack.restart_worker()
    response = c.post(f"/v1/models/{model['id']}/versions/v0/export", params=SEALED_OK)
    later = wait_job(c, response.json()["job_id"])
    assert later["status"] == "succeeded", later
    cancelled = c.get(f"/v1/jobs/{job_id}").json()
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
    assert c.delete(f"/v1/jobs/{later['id']}").status_code == 409


def test_worker_killed_mid_job_leaves_no_version(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    c = stack.client
    mid = model["id"]
    versions_before = [v["id"] for v in c.get(f"/v1/models/{mid}/versions").json()]
    active_before = c.get(f"/v1/models/{mid}").json()["active_version"]
    groups = people()
    records = [
        {"prompt": g[3]["prompt"], "subject": g[3]["subject"], "answer": g[3]["answer"]}
        for g in groups[30:45]
    ]
    # the test holds the model's edit lock: the job starts ("running") and then waits
    # for the lock, so it is still running when the kill lands, however fast the machine
    conn = Redis.from_url(stack.redis_url)
    conn.set(lock_key(mid), "test-holder|0")
    try:
        response = c.post(
            f"/v1/models/{mid}/forget",
            json={"records": records, "base_version": "v0"}, params=SEALED_OK,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        processes.wait_until(
            lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] != "queued", 60, 0.05,
            "job started",
        )
        stack.worker.signal(signal.SIGKILL)
        stack.worker.popen.wait(timeout=10)
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    finally:
        conn.delete(lock_key(mid))
        conn.close()

    stack.restart_worker()  # its start-up finds the dead worker's job
    job = wait_job(c, job_id, timeout=30)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost", job["error"]
    versions_after = [v["id"] for v in c.get(f"/v1/models/{mid}/versions").json()]
    assert versions_after == versions_before
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == active_before
    audit = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    lost = [e for e in audit if e["ids"].get("job") == job_id and e["action"] == "job.failed"]
    assert [e["detail"]["code"] for e in lost] == ["worker_lost"]
    # no patch blob but those of the versions before (the killed job uploaded none)
    named = {f"{v['patch']['sha256']}.safetensors"
             for v in c.get(f"/v1/models/{mid}/versions").json() if v.get("patch")}
    patches = stack.data_dir / "models" / mid / "patches"
    stored = {p.name for p in patches.iterdir()} if patches.is_dir() else set()
    assert {n for n in stored if not n.startswith(".")} == named
