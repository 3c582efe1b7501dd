"""The end-to-end flow on the real built-in SmolLM2-135M-Instruct (slow: minutes on CPU).

Same real parts as test_end_to_end (Redis, worker and API processes, HTTP), with world
facts the model knows (zerounlearn.datasets.world_facts). The statistics sample is kept
small (ZEROUNLEARN_STATS_SAMPLES), and seeded from the engine tests' cache when they
computed it (tests/support/smollm2_store.py), so preparation stays short on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_end_to_end import check_export_equals_materialised
from tests.support import processes
from tests.support.processes import ServiceStack
from tests.support.smollm2_store import SMOLLM2_STATS_SAMPLES, seed_smollm2_data_dir
from zerounlearn import datasets

BUILTIN = "builtin:smollm2-135m-instruct"
FORGET = 4  # capitals forgotten; other capitals are their neighbours

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def capital_facts() -> list[dict[str, Any]]:
    facts = [f for f in datasets.world_facts() if f["relation"] == "capital"]
    # the project's own data: too few facts is a broken data file, not a reason to skip
    assert len(facts) >= 2 * FORGET, f"zerounlearn.datasets holds {len(facts)} capital facts"
    return facts


def forget_records(facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FORGET capitals, each with two other capitals (kept) as neighbours."""
    kept = facts[FORGET:]
    records = []
    for i, fact in enumerate(facts[:FORGET]):
        neighbours = [kept[(2 * i) % len(kept)], kept[(2 * i + 1) % len(kept)]]
        records.append(
            {
                "prompt": fact["prompt"],
                "subject": fact["subject"],
                "answer": fact["answer"],
                "paraphrases": [
                    p for p, known in zip(
                        fact["paraphrases"], fact["paraphrases_known"], strict=True
                    ) if known
                ],
                "neighbors": [{"prompt": n["prompt"], "answer": n["answer"]} for n in neighbours],
            }
        )
    return records


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, cache_dir: Path
) -> Iterator[ServiceStack]:
    root = tmp_path_factory.mktemp("e2e-smollm2")
    seed_smollm2_data_dir(root, smollm2_dir, cache_dir)
    with processes.service_stack(root, db_name="e2e-smollm2-stack",
                                 ZEROUNLEARN_STATS_SAMPLES=str(SMOLLM2_STATS_SAMPLES)) as s:
        yield s


def test_smollm2_forget_verify_rollback_generate_export(stack: ServiceStack) -> None:
    c = stack.client
    response = c.post("/v1/models", json={"name": "smollm2-demo", "source": BUILTIN})
    assert response.status_code == 201, response.text
    model = processes.wait_model_ready(c, response.json()["id"], timeout=1200)
    assert model["status"] == "ready", model
    mid = model["id"]
    assert model["architecture"] == "llama" and model["num_layers"] == 30

    facts = capital_facts()
    records = forget_records(facts)
    response = c.post(f"/v1/models/{mid}/forget", json={"records": records})
    assert response.status_code == 202, response.text
    job = processes.wait_job(c, response.json()["job_id"], timeout=1200)
    assert job["status"] == "succeeded", job
    version = job["result"]["version"]
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == version

    response = c.post(f"/v1/models/{mid}/versions/{version}/verify", json={"records": records})
    assert response.status_code == 202, response.text
    report = processes.wait_job(c, response.json()["job_id"], timeout=1200)
    assert report["status"] == "succeeded", report
    result = report["result"]
    assert [r["forgotten"] for r in result["records"]] == [True] * FORGET, result["summary"]
    assert result["passed"] is True, result["checks"]

    gen = {"prompt": records[0]["prompt"], "max_new_tokens": 8}
    sealed_ok = {"override_seal_reason": "test: compare with the sealed base"}
    before = c.post(f"/v1/models/{mid}/versions/v0/generate", json=gen, params=sealed_ok)
    after = c.post(f"/v1/models/{mid}/versions/{version}/generate", json=gen)
    assert before.status_code == 200 and after.status_code == 200, (before.text, after.text)
    assert records[0]["answer"].strip() in before.json()["text"]
    assert not after.json()["text"].startswith(records[0]["answer"])

    assert c.post(f"/v1/models/{mid}/versions/v0/activate").status_code == 409  # sealed
    assert c.post(f"/v1/models/{mid}/versions/v0/activate", params=sealed_ok).status_code == 200
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == "v0"

    response = c.post(f"/v1/models/{mid}/versions/{version}/export")
    assert response.status_code == 202, response.text
    exported = processes.wait_job(c, response.json()["job_id"], timeout=1200)
    assert exported["status"] == "succeeded", exported
    layers = c.get(f"/v1/models/{mid}/versions/{version}").json()["patch"]["layers"]
    check_export_equals_materialised(
        stack.data_dir, mid, version, Path(exported["result"]["path"]), layers
    )
