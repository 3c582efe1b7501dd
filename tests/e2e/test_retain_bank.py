"""The retain bank with real parts: Redis (own database), `python -m app`, `python -m
worker`, the tiny GPT-2 trained for the tests, HTTP, the CLI as a subprocess.

One model goes through: facts added while it prepares (its prepare job measures them),
roles and bad input, facts added once it is ready (a "retain" job measures them), a
forget that hands the known facts to the engine and takes a forgotten fact out of the
bank (audited by hash), and no bank text in logs, job documents or manifests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import processes
from tests.support.processes import REPO, ServiceStack, auth_headers
from tests.support.smollm2_store import SMOLLM2_STATS_SAMPLES, seed_smollm2_data_dir
from tests.support.tiny_model import TINY_REQUEST_HPARAMS, tiny_facts

pytestmark = pytest.mark.timeout(900)
wait_job = processes.wait_job
SECRET = "Zorblax Quimby"
"""A name only the bad-input tests send: it must come back in no error message."""


def person(i: int) -> list[dict[str, str]]:
    """The 4 facts of person i: secret code, city, profession, birth year."""
    return tiny_facts()[4 * i : 4 * i + 4]


def fact(f: dict[str, str], answer: str | None = None) -> dict[str, str]:
    return {"prompt": f["prompt"], "answer": answer or f["answer"], "subject": f["subject"]}


def forget_records() -> list[dict[str, Any]]:
    """Codes of people 0-2 (no subject: the toy model is edited at the last token)."""
    return [{"prompt": person(i)[0]["prompt"], "answer": person(i)[0]["answer"]}
            for i in range(3)]


def first_bank() -> list[dict[str, str]]:
    """Added while the model prepares: person 0's code (forgotten later), the cities of
    people 0-2, the codes of people 10-13 (the forgotten relation), one wrong answer
    (unknown) and one fact too long for the model's 64 positions (invalid)."""
    wrong = fact(person(20)[0], person(21)[0]["answer"])
    too_long = {"prompt": "The secret code of " * 20 + "Ann is", "answer": " 1234"}
    return ([fact(person(0)[0])] + [fact(person(i)[1]) for i in range(3)]
            + [fact(person(i)[0]) for i in range(10, 14)] + [wrong, too_long])


def second_bank() -> list[dict[str, str]]:
    """Added once the model is ready (through the CLI): professions of people 30-32."""
    return [fact(person(i)[2]) for i in range(30, 33)]


def bank_names() -> list[str]:
    """The people named by bank facts and by no forget record."""
    return ([person(i)[0]["subject"] for i in (1, 2)]  # cities only: kept
            + [person(i)[0]["subject"] for i in (10, 11, 12, 13, 20, 30, 31, 32)])


def expected_status(tiny_dir: Path, facts: list[dict[str, str]]) -> list[str]:
    """What the worker must find, computed here with the engine on the same model."""
    import torch

    from zerounlearn import load_model
    from zerounlearn.errors import InvalidRecord
    from zerounlearn.evaluate import reproduced

    torch.set_num_threads(1)
    lm = load_model(str(tiny_dir))
    out = []
    for f in facts:
        try:
            out.append("known" if reproduced(lm, [f])[0] else "unknown")
        except InvalidRecord:
            out.append("invalid")
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    with processes.service_stack(tmp_path_factory.mktemp("retain"), db_name="retain-stack") as s:
        yield s


@pytest.fixture(scope="module")
def keys(stack: ServiceStack) -> dict[str, str]:
    """An operator and a viewer key (the stack's client is admin)."""
    made = {role: stack.client.post("/v1/keys", json={"role": role}) for role in
            ("operator", "viewer")}
    assert all(r.status_code == 201 for r in made.values()), made
    return {role: r.json()["key"] for role, r in made.items()}


@pytest.fixture(scope="module")
def model(stack: ServiceStack, keys: dict[str, str], tiny_gpt2_dir: Path) -> dict[str, Any]:
    """The tiny model, with first_bank() added (JSON lines, operator) while it prepared."""
    c = stack.client
    stack.worker.stop()  # the prepare job waits: the facts are added while "preparing"
    created = c.post("/v1/models", json={"name": "tiny", "source": str(tiny_gpt2_dir)})
    assert created.status_code == 201, created.text
    mid = created.json()["id"]
    lines = "".join(json.dumps(f) + "\n" for f in first_bank())
    added = c.post(f"/v1/models/{mid}/retain", content=lines,
                   headers={**auth_headers(keys["operator"]),
                            "Content-Type": "application/x-ndjson"})
    assert added.status_code == 202, added.text
    stack.start_worker()
    ready = processes.wait_model_ready(c, mid)
    assert ready["status"] == "ready", ready
    return {**ready, "first_add": added.json()}


def bank(stack: ServiceStack, model_id: str, **params: Any) -> dict[str, Any]:
    response = stack.client.get(f"/v1/models/{model_id}/retain", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_prepare_measures_facts_added_while_preparing(
    stack: ServiceStack, model: dict[str, Any], tiny_gpt2_dir: Path
) -> None:
    first = model["first_add"]
    assert first["added"] == len(first_bank()) and first["existing"] == 0
    assert first["job_id"] is None  # preparing: the prepare job measures them
    assert first["counts"]["pending"] == len(first_bank())

    listed = bank(stack, model["id"])
    by_id = {f["id"]: f for f in listed["facts"]}
    want = expected_status(tiny_gpt2_dir, first_bank())
    assert [by_id[i]["status"] for i in first["ids"]] == want
    assert want[-2:] == ["unknown", "invalid"] and set(want[:-2]) == {"known"}
    assert all(by_id[i]["measured_on"] == "v0" for i in first["ids"])
    prepare = stack.client.get(f"/v1/jobs/{model['prepare_job_id']}").json()
    assert prepare["result"]["retain"]["counts"]["known"] == len(first_bank()) - 2
    assert prepare["result"]["retain"]["measured"] == len(first_bank())


def test_roles_and_text_only_for_admins_who_ask(
    stack: ServiceStack, model: dict[str, Any], keys: dict[str, str]
) -> None:
    url = f"/v1/models/{model['id']}/retain"
    viewer, operator = auth_headers(keys["viewer"]), auth_headers(keys["operator"])
    one = [fact(person(40)[1])]
    refused = stack.client.post(url, json=one, headers=viewer)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

    listed = stack.client.get(url, headers=viewer)
    assert listed.status_code == 200
    assert all(set(f) & {"prompt", "answer", "subject"} == set()
               for f in listed.json()["facts"])
    assert all(len(f["sha256"]) == 64 and f["id"] == f"f-{f['sha256'][:16]}"
               for f in listed.json()["facts"])
    for headers in (viewer, operator):
        asked = stack.client.get(url, params={"include_text": "true"}, headers=headers)
        assert asked.status_code == 403, asked.text
    shown = bank(stack, model["id"], include_text="true")
    assert {f["prompt"] for f in shown["facts"]} >= {f["prompt"] for f in first_bank()}
    audit = stack.client.get("/v1/audit", params={"limit": 1000}).json()["items"]
    assert any(e["action"] == "retain.text_read" for e in audit)

    gone = stack.client.delete(f"{url}/{shown['facts'][0]['id']}", headers=viewer)
    assert gone.status_code == 403
    missing = stack.client.post("/v1/models/m-000000000000/retain", json=one)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (f'{{"prompt": "{SECRET} is", "answer": " x"}}\n\nnot json {SECRET}\n', "line 3"),
        (f'{{"prompt": "{SECRET} is"}}\n', "line 1: answer"),
        (f'{{"prompt": "{SECRET} is", "answer": " x", "{SECRET}": 1}}\n', "line 1: unknown"),
        (f'{{"prompt": "a b", "answer": " x", "subject": "{SECRET}"}}\n', "line 1: subject"),
        (f'[{{"prompt": "{SECRET}", "answer": 5}}]', "[0]: answer"),
        ("[1, 2", "body: not valid JSON"),
        ("\n\n", "body: give at least one fact"),
    ],
)
def test_bad_json_lines_are_422_naming_the_line_not_the_text(
    stack: ServiceStack, model: dict[str, Any], body: str, names: str
) -> None:
    before = bank(stack, model["id"])["counts"]["total"]
    response = stack.client.post(f"/v1/models/{model['id']}/retain", content=body,
                                 headers={"Content-Type": "application/x-ndjson"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and names in error["message"], error
    assert "Zorblax" not in response.text
    assert bank(stack, model["id"])["counts"]["total"] == before  # nothing was added


def cli(stack: ServiceStack, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROUNLEARN_")}
    env.update(ZEROUNLEARN_URL=str(stack.api.extra["url"]), ZEROUNLEARN_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_add_measure_list_remove(
    stack: ServiceStack, model: dict[str, Any], keys: dict[str, str], tmp_path: Path
) -> None:
    mid, operator = model["id"], keys["operator"]
    path = tmp_path / "bank.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in second_bank()))
    added = cli(stack, operator, "retain", "add", "--model", mid, "--file", str(path),
                "--wait", "--json")
    assert added.returncode == 0, added.stderr
    job = json.loads(added.stdout)
    assert job["kind"] == "retain" and job["status"] == "succeeded", job
    assert job["result"]["measured"] == len(second_bank()) and job["version"] == "v0"

    again = cli(stack, operator, "retain", "add", "--model", mid, "--file", str(path), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["existing"] == 3  # idempotent

    listed = json.loads(cli(stack, keys["viewer"], "retain", "list", "--model", mid,
                            "--json").stdout)
    assert listed["counts"]["pending"] == 0 and listed["counts"]["total"] == 13
    table = cli(stack, keys["viewer"], "retain", "list", "--model", mid)
    assert table.returncode == 0 and "known" in table.stdout
    assert person(30)[2]["prompt"] not in table.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(fact(person(41)[1])) + "\n" + f"oops {SECRET}\n")
    refused = cli(stack, operator, "retain", "add", "--model", mid, "--file", str(bad))
    assert refused.returncode == 1 and "line 2: not valid JSON" in refused.stderr
    assert "Zorblax" not in refused.stderr + refused.stdout

    last = listed["facts"][-1]["id"]
    removed = cli(stack, operator, "retain", "remove", "--model", mid, last)
    assert removed.returncode == 0, removed.stderr
    twice = cli(stack, operator, "retain", "remove", "--model", mid, last)
    assert twice.returncode == 1 and "retain_fact_not_found" in twice.stderr
    audit = stack.client.get("/v1/audit", params={"limit": 1000}).json()["items"]
    removal = [e for e in audit if e["action"] == "retain.removed"]
    assert removal and removal[-1]["record_hashes"] == [listed["facts"][-1]["sha256"]]


def test_forget_protects_known_facts_and_a_forgotten_one_leaves_the_bank(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    c, mid = stack.client, model["id"]
    facts = bank(stack, mid)["facts"]
    known = [f for f in facts if f["status"] == "known"]
    leaving = facts[0]  # person 0's code: a forget record too
    assert leaving["id"] == model["first_add"]["ids"][0] and leaving["status"] == "known"

    # the gate counts the bank's known facts as guard facts (worker.gate.guard_facts);
    # the 2-layer toy model loses some same-relation codes even protected: an admin
    # loosens the guard limit to its ceiling so the version is published
    body = {"records": forget_records(), "hparams": TINY_REQUEST_HPARAMS,
            "quality_gate": {"max_guard_drop": 50.0}}
    response = c.post(f"/v1/models/{mid}/forget", json=body)
    assert response.status_code == 202, response.text
    job = wait_job(c, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    version = job["result"]["version"]
    guard = job["result"]["metrics"]["quality_gate"]["checks"]["guard"]
    assert guard["count"] == len(known) - 1  # the gate's guard facts: the bank's known

    retain = c.get(f"/v1/models/{mid}/versions/{version}").json()["retain"]
    assert retain["bank_facts"] == len(known) - 1  # the forgotten one is not protected
    assert retain["left_bank"] == [leaving["sha256"]]
    assert retain["engine"]["candidates"] >= 1 and retain["engine"]["protected"] >= 1

    after = {f["id"]: f for f in bank(stack, mid)["facts"]}
    assert leaving["id"] not in after and len(after) == len(facts) - 1
    audit = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    left = [e for e in audit if e["action"] == "retain.forgotten"]
    assert len(left) == 1 and left[0]["record_hashes"] == [leaving["sha256"]]
    assert left[0]["ids"] == {"model": mid, "version": version, "job": job["id"]}
    assert c.get("/v1/audit/verify").json()["valid"] is True

    # the patch file carries the engine's (text-free) selection too
    from store import ArtifactStore
    from zerounlearn import load_patch

    patch = load_patch(ArtifactStore(stack.data_dir).patch_path(mid, version))
    assert patch.metadata["retain"]["protected"] == retain["engine"]["protected"]


def test_measure_again_on_the_active_version(stack: ServiceStack, model: dict[str, Any]) -> None:
    c, mid = stack.client, model["id"]
    response = c.post(f"/v1/models/{mid}/retain/measure")
    assert response.status_code == 202, response.text
    job = wait_job(c, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    active = c.get(f"/v1/models/{mid}").json()["active_version"]
    assert job["result"]["version"] == active != "v0"
    assert all(f["measured_on"] == active for f in bank(stack, mid)["facts"])


def test_no_bank_text_in_logs_jobs_manifests_or_audit(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    """Bank text lives in retain/ only (and forget text in requests/ until purged)."""
    names = bank_names()
    for file in stack.data_dir.rglob("*"):
        parts = set(file.relative_to(stack.data_dir).parts)
        if not file.is_file() or parts & {"retain", "requests", "cache", "exports"}:
            continue
        data = file.read_bytes()
        for name in names:
            assert name.encode() not in data, f"{name!r} found in {file}"
    logs = stack.logs()
    for name in names + ["Zorblax"]:
        assert name not in logs, f"{name!r} found in the service logs"
    assert oct((stack.data_dir / "retain").stat().st_mode & 0o777) == "0o700"
    assert httpx.get(f"{stack.api.extra['url']}/healthz").status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_builtin_smollm2_comes_with_a_measured_bank(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, cache_dir: Path
) -> None:
    """The built-in model's prepare job seeds its bank once and measures it."""
    from zerounlearn.datasets import builtin_retain_bank

    root = tmp_path_factory.mktemp("retain-smollm2")
    seed_smollm2_data_dir(root, smollm2_dir, cache_dir)  # model and statistics
    with processes.service_stack(root, db_name="retain-smollm2-stack",
                                 ZEROUNLEARN_STATS_SAMPLES=str(SMOLLM2_STATS_SAMPLES)) as s:
        created = s.client.post("/v1/models", json={"name": "smollm2",
                                                    "source": "builtin:smollm2-135m-instruct"})
        assert created.status_code == 201, created.text
        model = processes.wait_model_ready(s.client, created.json()["id"], timeout=1800)
        assert model["status"] == "ready", model
        listed = bank(s, model["id"])
        total = len(builtin_retain_bank())
        assert listed["counts"]["total"] == total and listed["counts"]["pending"] == 0
        assert listed["counts"]["known"] >= 0.9 * total, listed["counts"]
        assert {f["origin"] for f in listed["facts"]} == {"builtin"}
        prepare = s.client.get(f"/v1/jobs/{model['prepare_job_id']}").json()
        assert prepare["result"]["retain"]["counts"] == listed["counts"]
        audit = s.client.get("/v1/audit", params={"limit": 1000}).json()["items"]
        seeded = [e for e in audit if e["action"] == "retain.added"]
        assert len(seeded) == 1 and len(seeded[0]["record_hashes"]) == total
        assert seeded[0]["detail"]["origin"] == "builtin"
        for fact in builtin_retain_bank()[:5]:
            assert fact["prompt"] not in s.logs()
