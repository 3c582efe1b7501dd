"""ArtifactStore against real files: atomic publish, sequential ids, locked transitions.

Every test runs on the local directory and on a real S3-compatible server (moto's on
localhost); the few that look at the directory layout itself run locally only.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from store import ArtifactStore, Conflict, InvalidDocument, NotFound, new_job_id
from tests.support.moto_s3 import CREDENTIALS, new_bucket


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(tmp_path / "data")
    from store.backends.s3 import S3Backend

    endpoint = request.getfixturevalue("s3_endpoint")
    backend = S3Backend(new_bucket(endpoint), endpoint_url=endpoint, client_options=CREDENTIALS)
    return ArtifactStore(tmp_path / "data", backend)


def local_only(store: ArtifactStore) -> None:
    if store.shared:
        pytest.skip("looks at the local directory layout (tests/store/test_store_backends.py "
                    "covers the object store's)")


@pytest.fixture
def model(store: ArtifactStore) -> dict:
    doc = store.create_model({"name": "tiny", "source": "/models/tiny"})
    store.publish_version(doc["id"], {"parent": None}, None)
    return doc


def _patch(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"patch-{hashlib.sha256(content).hexdigest()[:8]}.safetensors"
    path.write_bytes(content)
    return path


def _record(text: str) -> dict:
    return {"sha256": hashlib.sha256(text.encode()).hexdigest()}


# ----------------------------------------------------------------------- models
def test_model_document_has_every_field(store: ArtifactStore) -> None:
    doc = store.create_model({"name": "tiny", "source": "/models/tiny"})
    assert doc["id"].startswith("m-") and len(doc["id"]) == 14
    assert doc["status"] == "preparing" and doc["active_version"] == "v0"
    expected = {"id", "name", "source", "architecture", "num_layers", "edit_layers", "dtype"}
    expected |= {"active_version", "status", "error", "created_at"}
    assert expected <= set(doc)
    assert doc["created_at"].endswith("Z")
    assert store.get_model(doc["id"]) == doc
    assert store.list_models() == [doc]


def test_update_model_is_persisted_and_id_is_fixed(store: ArtifactStore, model: dict) -> None:
    updated = store.update_model(model["id"], status="ready", num_layers=2)
    assert store.get_model(model["id"]) == updated
    assert updated["status"] == "ready" and updated["num_layers"] == 2
    with pytest.raises(InvalidDocument):
        store.update_model(model["id"], id="m-000000000000")
    with pytest.raises(InvalidDocument):
        store.update_model(model["id"], status="half-ready")


@pytest.mark.parametrize("bad", ["m-1", "../etc", "m-0123456789ab/../x", "", "M-0123456789AB"])
def test_malformed_ids_are_not_found(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(NotFound):
        store.get_model(bad)
    with pytest.raises(NotFound):
        store.get_job(bad)


def test_unknown_ids_are_not_found_and_key_errors(store: ArtifactStore, model: dict) -> None:
    with pytest.raises(KeyError):
        store.get_model("m-000000000000")
    with pytest.raises(NotFound) as info:
        store.get_version(model["id"], "v7")
    assert info.value.kind == "version"
    with pytest.raises(NotFound):
        store.get_job(new_job_id())


def test_duplicate_model_id_conflicts(store: ArtifactStore, model: dict) -> None:
    with pytest.raises(Conflict):
        store.create_model({"id": model["id"], "name": "again", "source": "/x"})


# --------------------------------------------------------------------- versions
def test_publish_assigns_sequential_ids_and_records_patch(
    store: ArtifactStore, model: dict, tmp_path: Path
) -> None:
    content = b"not really safetensors"
    v1 = store.publish_version(
        model["id"],
        {
            "parent": "v0",
            "method": "zerounlearn",
            "records": [_record("a")],
            "patch": {"layers": [1]},
        },
        _patch(tmp_path, content),
    )
    assert v1["id"] == "v1"
    assert v1["patch"] == {
        "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "layers": [1],
    }
    assert store.patch_path(model["id"], "v1").read_bytes() == content
    v2 = store.publish_version(model["id"], {"parent": "v1"}, _patch(tmp_path, b"two"))
    assert v2["id"] == "v2"
    assert [v["id"] for v in store.list_versions(model["id"])] == ["v0", "v1", "v2"]
    assert store.lineage(model["id"], "v2") == ["v0", "v1", "v2"]
    with pytest.raises(NotFound):
        store.patch_path(model["id"], "v0")


def test_sequential_ids_under_concurrency(store: ArtifactStore, model: dict) -> None:
    start = threading.Barrier(8)

    def publish(i: int) -> str:
        start.wait()
        return store.publish_version(model["id"], {"parent": "v0", "metrics": {"i": i}}, None)["id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(publish, range(8)))
    assert sorted(ids, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(1, 9)]
    listed = store.list_versions(model["id"])
    assert [v["id"] for v in listed] == [f"v{n}" for n in range(9)]
    # each manifest names itself and kept its own payload
    assert sorted(v["metrics"]["i"] for v in listed[1:]) == list(range(8))


def test_failed_publish_leaves_nothing_visible(
    store: ArtifactStore, model: dict, tmp_path: Path
) -> None:
    local_only(store)
    with pytest.raises(InvalidDocument):
        store.publish_version(model["id"], {"parent": "v0", "records": [{"prompt": "x"}]}, None)
    with pytest.raises(InvalidDocument):
        store.publish_version(
            model["id"], {"parent": "v0", "patch": {"sha256": "0" * 64}}, _patch(tmp_path, b"p")
        )
    with pytest.raises(NotFound):
        store.publish_version(model["id"], {"parent": "v5"}, None)
    assert [v["id"] for v in store.list_versions(model["id"])] == ["v0"]


def test_publishing_never_rewrites_an_existing_version(
    store: ArtifactStore, model: dict, tmp_path: Path
) -> None:
    local_only(store)
    v1 = store.publish_version(model["id"], {"parent": "v0"}, _patch(tmp_path, b"first"))
    patch_file = store.patch_path(model["id"], "v1")
    before = (patch_file.read_bytes(), patch_file.stat().st_mtime_ns)
    # a manifest that claims to be v1 is still published under a new id
    claim = {**v1, "id": "v1", "patch": None}
    v2 = store.publish_version(model["id"], claim, _patch(tmp_path, b"second"))
    assert v2["id"] == "v2"
    assert (patch_file.read_bytes(), patch_file.stat().st_mtime_ns) == before
    assert store.get_version(model["id"], "v1") == v1


def test_locations_are_created_on_demand(store: ArtifactStore) -> None:
    for path in (store.stats_dir, store.cache_dir, store.exports_dir):
        assert path.is_dir() and path.parent == store.root
    store.check_writable()


# ------------------------------------------------------------------------- jobs
def test_job_document_defaults(store: ArtifactStore, model: dict) -> None:
    job = store.create_job({"kind": "forget", "model_id": model["id"], "version": "v0"})
    assert job["id"].startswith("j-") and len(job["id"]) == 18
    assert job["status"] == "queued"
    assert job["progress"] == {"phase": None, "fraction": 0.0}
    assert job["started_at"] is job["finished_at"] is job["result"] is job["error"] is None
    assert store.get_job(job["id"]) == job
    assert store.list_jobs(model_id=model["id"]) == [job]
    assert store.list_jobs(model_id="m-000000000000") == []
    with pytest.raises(InvalidDocument):
        store.create_job({"kind": "train", "model_id": model["id"]})


def test_transition_sets_timestamps_and_refuses_wrong_state(
    store: ArtifactStore, model: dict
) -> None:
    job = store.create_job({"kind": "export", "model_id": model["id"], "version": "v0"})
    running = store.transition_job(job["id"], ["queued"], "running")
    assert running is not None and running["started_at"] and running["finished_at"] is None
    assert store.transition_job(job["id"], ["queued"], "cancelled") is None
    store.update_job(job["id"], progress={"phase": "apply", "fraction": 0.5})
    done = store.transition_job(job["id"], ["running"], "succeeded", result={"path": "/x"})
    assert done is not None and done["finished_at"] and done["result"] == {"path": "/x"}
    assert done["progress"] == {"phase": "apply", "fraction": 0.5}
    assert store.get_job(job["id"]) == done


def test_only_one_of_two_racing_transitions_wins(store: ArtifactStore, model: dict) -> None:
    for _ in range(20):
        job = store.create_job({"kind": "forget", "model_id": model["id"], "version": "v0"})
        start = threading.Barrier(2)

        def move(to: str, job_id: str = job["id"], start: threading.Barrier = start):
            start.wait()
            return store.transition_job(job_id, ["queued"], to)

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(move, ["running", "cancelled"]))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert store.get_job(job["id"])["status"] == winners[0]["status"]


# ------------------------------------------------------------- file primitives
def test_write_bytes_atomic_replaces_or_creates_once(tmp_path: Path) -> None:
    from store.files import TMP_PREFIX, write_bytes_atomic

    path = tmp_path / "doc.json"
    assert write_bytes_atomic(path, b"one", 0o600) is True
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o600
    assert write_bytes_atomic(path, b"two") is True  # replace (the default)
    assert write_bytes_atomic(path, b"three", replace=False) is False  # name taken
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)] == []


