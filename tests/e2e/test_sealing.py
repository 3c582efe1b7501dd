"""Superseded versions are sealed (issue 11, part 2).

First the parts alone: which versions lineage seals, the merged patch of a chain
(torch.equal on every weight, edit key and carry), and the store's sealing, compaction
and deletion on the local directory and on S3 (moto). Then real processes (`python -m app`,
`python -m worker`, the tiny GPT-2, its own Redis db): a forget
seals v0 (generate, export, verify, activate and base use give 409 version_sealed; an
admin's override with a reason goes through and is audited; v0's export is deleted), a
forget queued on a base that a forget sealed meanwhile is refused by the worker, a
compacted version gives the same weights from v0, DELETE removes a version's files and
keeps its manifest marked deleted, and a branch without a deletion is sealed by it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from store import ArtifactStore
from store.backends.s3 import S3Backend
from store.compaction import (
    VersionGone,
    compacted_path,
    materialise_plan,
    needed_by,
    store_compacted,
)
from store.lifecycle import public_state
from store.retire import delete_version_files
from store.sealing import compute_seals, seal_model
from tests.engine.random_models import as_loaded, tiny_gpt2
from tests.support import processes
from tests.support.live import records
from tests.support.moto_s3 import CREDENTIALS, new_bucket
from tests.support.processes import ServiceStack
from tests.support.tiny_model import TINY_REQUEST_HPARAMS
from worker.compaction import merge_patches
from worker.model_cache import ModelCache
from worker.version_guard import VersionDeleted
from zerounlearn.patch import Patch, apply_patch

pytestmark = pytest.mark.timeout(900)
REASON = "incident 42: compare with the rolled-back model"


# ------------------------------------------------------------ the parts alone
def manifest(vid: str, parent: str | None, *jobs: str) -> dict[str, Any]:
    return {"id": vid, "parent": parent, "jobs": list(jobs)}


def sealed_by(seals: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {v: [s["version"] for s in by] for v, by in seals.items()}


def test_lineage_decides_what_is_sealed() -> None:
    assert compute_seals([manifest("v0", None)]) == {}
    chain = [manifest("v0", None), manifest("v1", "v0", "j1"), manifest("v2", "v1", "j2")]
    seals = compute_seals(chain)
    assert sealed_by(seals) == {"v0": ["v1", "v2"], "v1": ["v2"]}
    assert seals["v0"][0]["jobs"] == ["j1"]
    # a branch from v0 lacks v1 and v2; v1 and v2 lack the branch's deletion
    branch = [*chain, manifest("v3", "v0", "j3", "j4")]
    assert sealed_by(compute_seals(branch)) == {
        "v0": ["v1", "v2", "v3"], "v1": ["v2", "v3"], "v2": ["v3"], "v3": ["v1", "v2"]}
    assert compute_seals(branch)["v1"][1]["jobs"] == ["j3", "j4"]


def random_step(lm: Any, layers: list[int], seed: int) -> Patch:
    """A patch as an edit makes one: new weights, edit keys, a carry."""
    gen = torch.Generator().manual_seed(seed)
    weights, keys, carry = {}, {}, {}
    for layer in layers:
        w = lm.adapter.get_weight(lm.model, layer)  # (d_model, d_ff)
        weights[layer] = w + 0.1 * torch.randn(w.shape, generator=gen)
        keys[layer] = torch.randn((w.shape[1], 2), generator=gen)  # (d_ff, k)
        carry[layer] = torch.randn((w.shape[1], 3), generator=gen).to(torch.bfloat16).float()
    return Patch("test", {}, "0" * 64, weights, keys=keys, carry=carry)


def test_a_merged_chain_equals_the_chain() -> None:
    base = tiny_gpt2()
    chained = as_loaded(copy.deepcopy(base))
    chained.track_edit_keys()
    steps = []
    for seed, layers in enumerate(([0, 1], [1, 2], [1])):
        steps.append(random_step(chained, layers, seed))
        apply_patch(chained, steps[-1])
    merged = merge_patches(steps, ["v1", "v2", "v3"])
    assert merged.layers == [0, 1, 2] and merged.metadata["compacted"]["replaces"][-1] == "v3"
    once = as_loaded(copy.deepcopy(base))
    once.track_edit_keys()
    apply_patch(once, merged)
    a, b = chained.model.state_dict(), once.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert chained.edit_keys and once.edit_keys
    assert chained.edit_keys.keys() == once.edit_keys.keys()
    assert all(torch.equal(chained.edit_keys[k], once.edit_keys[k]) for k in once.edit_keys)
    assert once.edit_keys[1].shape[1] == 6  # three steps' keys on layer 1, in order
    assert all(torch.equal(chained.carry[k], once.carry[k]) for k in (0, 1, 2))
    assert not torch.equal(a["transformer.h.1.mlp.c_proj.weight"],
                           base.state_dict()["transformer.h.1.mlp.c_proj.weight"])


@pytest.fixture(params=["local", "s3"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ArtifactStore, ...]:
    """Two machines' stores on one backend (the same directory, or one S3 bucket)."""
    shared = f"sqlite:///{tmp_path / 'shared-metadata.sqlite3'}"  # one database for both
    if request.param == "local":
        return (ArtifactStore(tmp_path / "a", database_url=shared),
                ArtifactStore(tmp_path / "a", database_url=shared))
    endpoint = request.getfixturevalue("s3_endpoint")
    url = new_bucket(endpoint)
    return tuple(ArtifactStore(tmp_path / name, S3Backend(
        url, endpoint_url=endpoint, client_options=CREDENTIALS), database_url=shared)
        for name in ("a", "b"))


def test_the_store_seals_compacts_and_deletes_on_both_backends(
    two_stores: tuple[ArtifactStore, ArtifactStore], tmp_path: Path
) -> None:
    one, other = two_stores
    mid = one.create_model({"name": "m", "source": "/nowhere", "status": "ready"})["id"]
    one.publish_version(mid, {"parent": None}, None)
    blobs = {}
    for vid, parent, data in (("v1", "v0", b"same"), ("v2", "v1", b"same"), ("v3", "v2", b"3")):
        (tmp_path / vid).write_bytes(data)
        blobs[vid] = one.publish_version(mid, {"parent": parent, "job_id": f"j-{vid}",
                                               "patch": {"layers": [0]}}, tmp_path / vid)
    exported = tmp_path / "export"
    exported.mkdir()
    (exported / "weights").write_bytes(b"w")
    one.publish_export(mid, "v1", exported, "weights")
    assert seal_model(one, "test", mid, "v3")["exports_deleted"] == ["v1"]
    assert not (one.root / "exports" / mid / "v1").exists()
    assert one.backend.list_keys(f"exports/{mid}/v1/") == []
    assert public_state(other.lifecycle.read(mid), "v1")["sealed_by"] == ["j-v2", "j-v3"]

    assert needed_by(one, mid, "v1") == ["v2", "v3"]
    merged = tmp_path / "merged"
    merged.write_bytes(b"merged")
    stored = store_compacted(one, mid, "v3", merged)
    one.lifecycle.set_compacted(mid, "v3", {"patch": {**stored, "layers": [0]}})
    assert compacted_path(other, mid, "v3").read_bytes() == b"merged"  # the other machine
    assert materialise_plan(other, mid, "v3") == ("v3", [])
    assert needed_by(one, mid, "v1") == ["v2"]  # v2 itself still is built from v1

    patch_of_v1 = one.patch_path(mid, "v1")
    delete_version_files(one, "test", mid, "v1")
    assert public_state(one.lifecycle.read(mid), "v1")["deleted"] is True
    # patches are content-addressed: v2 has the same bytes, so the blob stays (an
    # object store's per-version cached copy of v1 goes)
    assert patch_of_v1.exists() is not one.shared
    assert one.get_version(mid, "v1")["parent"] == "v0"  # the manifest stays
    assert other.patch_path(mid, "v2").read_bytes() == b"same"  # same bytes, v2's: kept
    # the store does what it is told; the API's rule (409 version_in_use) is what keeps
    # a live version from losing a patch it is built from
    with pytest.raises(VersionGone):
        materialise_plan(other, mid, "v2")
    delete_version_files(one, "test", mid, "v3")
    assert one.backend.list_keys(f"models/{mid}/compacted/") == []
    assert [e["action"] for e in one.audit.page(0, 100)[0]] == [
        "version.sealed", "version.deleted", "version.deleted"]


# ------------------------------------------------------------ real processes
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    with processes.service_stack(tmp_path_factory.mktemp("sealing"),
                                 db_name="sealing-stack") as s:
        yield s


@pytest.fixture(scope="module")
def model(stack: ServiceStack, tiny_gpt2_dir: Path) -> dict[str, Any]:
    return processes.register_ready(stack.client, str(tiny_gpt2_dir))


@pytest.fixture(scope="module")
def operator(stack: ServiceStack) -> dict[str, str]:
    created = stack.client.post("/v1/keys", json={"role": "operator"})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body


def forget(stack: ServiceStack, mid: str, person: int, **extra: Any) -> dict[str, Any]:
    params = extra.pop("params", None)
    body = {"records": records(person), "hparams": TINY_REQUEST_HPARAMS, **extra}
    response = stack.client.post(f"/v1/models/{mid}/forget", json=body, params=params)
    assert response.status_code == 202, response.text
    return response.json()


def version(stack: ServiceStack, mid: str, vid: str) -> dict[str, Any]:
    response = stack.client.get(f"/v1/models/{mid}/versions/{vid}")
    assert response.status_code == 200, response.text
    return response.json()


def audit(stack: ServiceStack, action: str) -> list[dict[str, Any]]:
    entries = stack.client.get("/v1/audit", params={"limit": 1000}).json()["items"]
    return [e for e in entries if e["action"] == action]


def weights_of(data_dir: Path, mid: str, vid: str) -> Any:
    """The version as a fresh worker cache builds it (in this process)."""
    lm = ModelCache(ArtifactStore(data_dir), track_edit_keys=True).get(mid, vid)
    return {k: v.clone() for k, v in lm.model.state_dict().items()}, dict(lm.edit_keys or {})


def test_a_forget_seals_its_base(
    stack: ServiceStack, model: dict[str, Any], operator: dict[str, str]
) -> None:
    c, mid = stack.client, model["id"]
    url = f"/v1/models/{mid}/versions/v0"
    exported = processes.wait_job(c, c.post(f"{url}/export").json()["job_id"])
    assert exported["status"] == "succeeded", exported
    export_dir = Path(exported["result"]["path"])
    assert export_dir.is_dir()
    assert version(stack, mid, "v0")["sealed"] is False

    job = processes.wait_job(c, forget(stack, mid, 0)["job_id"])
    assert job["status"] == "succeeded" and job["result"]["version"] == "v1", job

    v0, v1 = version(stack, mid, "v0"), version(stack, mid, "v1")
    assert v0["sealed"] is True and v0["sealed_by"] == [job["id"]] and v0["sealed_at"]
    assert v1["sealed"] is False and v1["sealed_by"] == [] and v1["active"] is True
    listed = {v["id"]: v["sealed"] for v in c.get(f"/v1/models/{mid}/versions").json()}
    assert listed == {"v0": True, "v1": False}
    assert not export_dir.exists()  # the sealed version's export is gone
    (sealed,) = audit(stack, "version.sealed")
    assert sealed["ids"]["version"] == "v1" and sealed["detail"]["sealed"] == {"v0": ["v1"]}
    assert sealed["detail"]["exports_deleted"] == ["v0"]

    gen = {"prompt": records(0)[0]["prompt"], "max_new_tokens": 4}
    refused = error_of(c.post(f"{url}/generate", json=gen), 409, "version_sealed")
    assert refused["sealed_by"] == [job["id"]] and "override_seal_reason" in (
        refused["error"]["message"])
    error_of(c.post(f"{url}/export"), 409, "version_sealed")
    error_of(c.post(f"{url}/verify", json={"records": records(0)}), 409, "version_sealed")
    error_of(c.post(f"{url}/activate"), 409, "version_sealed")
    error_of(c.post(f"/v1/models/{mid}/forget", json={"records": records(1),
                                                      "base_version": "v0"}),
             409, "version_sealed")
    assert c.get(f"/v1/models/{mid}").json()["active_version"] == "v1"
    assert audit(stack, "version.seal_overridden") == []

    # only an admin overrides, with a reason that is not blank
    error_of(c.post(f"{url}/generate", json=gen, headers=operator,
                    params={"override_seal_reason": REASON}), 403, "forbidden")
    error_of(c.post(f"{url}/generate", json=gen, params={"override_seal_reason": "  "}),
             422, "invalid_input")
    through = c.post(f"{url}/generate", json=gen, params={"override_seal_reason": REASON})
    assert through.status_code == 200, through.text
    (override,) = audit(stack, "version.seal_overridden")
    assert override["ids"] == {"model": mid, "version": "v0"}
    assert override["detail"] == {"action": "generate", "reason": REASON,
                                  "sealed_by": [job["id"]]}
    receipt = c.get(f"/v1/jobs/{job['id']}/receipt").json()["receipt"]
    assert receipt["seal_overrides"] == [{
        "version": "v0", "action": "generate", "reason": REASON, "actor": override["actor"],
        "at": override["time"], "audit_seq": override["seq"]}]
    assert c.get("/v1/audit/verify").json()["valid"] is True


def test_a_base_sealed_after_acceptance_is_refused_by_the_worker(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    """Two requests accepted together: one follows the head (v1), the other names v1.
    The first seals v1 when it succeeds; the second, accepted before that, would build
    a branch without the first deletion, and fails instead."""
    c, mid = stack.client, model["id"]
    head = forget(stack, mid, 1)
    explicit = forget(stack, mid, 2, base_version="v1")
    done = processes.wait_job(c, head["job_id"])
    refused = processes.wait_job(c, explicit["job_id"])
    assert done["status"] == "succeeded" and done["result"]["version"] == "v2", done
    assert refused["status"] == "failed", refused
    assert refused["error"]["code"] == "version_sealed" and head["job_id"] in (
        refused["error"]["message"])
    assert [v["id"] for v in c.get(f"/v1/models/{mid}/versions").json()] == ["v0", "v1", "v2"]
    assert version(stack, mid, "v1")["sealed_by"] == [head["job_id"]]
    assert version(stack, mid, "v0")["sealed"] is True


def test_compaction_and_delete(stack: ServiceStack, model: dict[str, Any]) -> None:
    c, mid = stack.client, model["id"]
    base = f"/v1/models/{mid}/versions"
    error_of(c.delete(f"{base}/v2"), 409, "version_active")
    error_of(c.delete(f"{base}/v0"), 409, "version_protected")
    in_use = error_of(c.delete(f"{base}/v1"), 409, "version_in_use")
    assert in_use["needed_by"] == ["v2"]

    chained, chained_keys = weights_of(stack.data_dir, mid, "v2")
    response = c.post(f"{base}/v2/compact")
    assert response.status_code == 202, response.text
    job = processes.wait_job(c, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["replaces"] == ["v1", "v2"] and job["result"]["deletable"] == ["v1"]
    compacted = version(stack, mid, "v2")["compacted"]
    assert compacted["patch"]["sha256"] == job["result"]["patch"]["sha256"]
    once, once_keys = weights_of(stack.data_dir, mid, "v2")  # v0 + the one patch
    assert chained.keys() == once.keys()
    assert all(torch.allclose(chained[k], once[k], rtol=0, atol=0) for k in chained)
    assert chained_keys.keys() == once_keys.keys() and chained_keys
    assert all(torch.equal(chained_keys[k], once_keys[k]) for k in chained_keys)

    # v1 (sealed) is exported under an override, then deleted: files gone, manifest kept
    exported = c.post(f"{base}/v1/export", params={"override_seal_reason": REASON})
    export_dir = Path(processes.wait_job(c, exported.json()["job_id"])["result"]["path"])
    patch = ArtifactStore(stack.data_dir).patch_path(mid, "v1")  # its blob
    assert export_dir.is_dir() and patch.is_file()
    before = version(stack, mid, "v1")
    response = c.delete(f"{base}/v1")
    assert response.status_code == 200, response.text
    assert response.json()["deleted"] is True and response.json()["deleted_at"]
    assert not patch.exists() and not export_dir.exists()
    after = version(stack, mid, "v1")
    assert after["deleted"] is True and after["sealed"] is True
    assert {k: after[k] for k in ("parent", "records", "patch", "job_id")} == {
        k: before[k] for k in ("parent", "records", "patch", "job_id")}
    assert c.delete(f"{base}/v1").status_code == 200  # again: nothing left to do
    (deleted,) = audit(stack, "version.deleted")
    assert deleted["ids"] == {"model": mid, "version": "v1"}
    assert set(deleted["detail"]["removed"]) == {"patch", "exports"}

    gen = {"prompt": records(0)[0]["prompt"], "max_new_tokens": 4}
    error_of(c.post(f"{base}/v1/generate", json=gen, params={"override_seal_reason": REASON}),
             409, "version_deleted")
    error_of(c.post(f"{base}/v1/activate", params={"override_seal_reason": REASON}),
             409, "version_deleted")
    with pytest.raises(VersionDeleted):
        weights_of(stack.data_dir, mid, "v1")
    rebuilt, _ = weights_of(stack.data_dir, mid, "v2")  # v1's patch is not needed
    assert all(torch.equal(rebuilt[k], chained[k]) for k in chained)
    assert c.post(f"{base}/v2/generate", json=gen).status_code == 200


def test_a_branch_without_a_deletion_is_sealed(stack: ServiceStack, model: dict[str, Any]) -> None:
    """An admin's override builds on v0: the new version lacks both earlier deletions
    (sealed by them), and the versions that hold them lack the new one (sealed by it)."""
    c, mid = stack.client, model["id"]
    jobs = {v: version(stack, mid, v)["job_id"] for v in ("v1", "v2")}
    job = processes.wait_job(c, forget(stack, mid, 3, base_version="v0",
                                       params={"override_seal_reason": REASON})["job_id"])
    assert job["status"] == "succeeded" and job["result"]["version"] == "v3", job
    v3 = version(stack, mid, "v3")
    assert v3["parent"] == "v0" and v3["sealed"] is True
    assert sorted(v3["sealed_by"]) == sorted(jobs.values())
    assert job["id"] in version(stack, mid, "v2")["sealed_by"]
    assert version(stack, mid, "v0")["sealed_by"] == [jobs["v1"], jobs["v2"], job["id"]]
    overrides = audit(stack, "version.seal_overridden")
    assert [(o["detail"]["action"], o["ids"]["version"]) for o in overrides][-1] == (
        "forget", "v0")
    assert audit(stack, "version.sealed")[-1]["detail"]["sealed"] == {
        "v0": ["v3"], "v2": ["v3"], "v3": ["v1", "v2"], "v1": ["v3"]}
