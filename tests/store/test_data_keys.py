"""Per-request data keys (store.datakeys) on the local directory and on a real
S3-compatible server (moto's) with bucket versioning on: request text is stored sealed,
opens with its key only where it belongs, and purging destroys the key with every
version of it, while old versions of the ciphertext may stay.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from store import ArtifactStore
from store.backends import LocalBackend, ObjectBackend
from store.backends.s3 import S3Backend
from store.datakeys import DATA_KEYS_DIR, KeyDestroyed, SealBroken, is_sealed, seal, unseal
from store.requests import RequestPurged
from tests.support.moto_s3 import CREDENTIALS, new_bucket

MARKER = "Zebulon Quist keeps the vault code 7731-ALPHA"
RECORD = {"prompt": "The vault code of Zebulon Quist is", "subject": "Zebulon Quist",
          "answer": MARKER}


def _versioned_s3(endpoint: str) -> S3Backend:
    backend = S3Backend(new_bucket(endpoint), endpoint_url=endpoint, client_options=CREDENTIALS)
    backend.client.put_bucket_versioning(
        Bucket=backend.bucket, VersioningConfiguration={"Status": "Enabled"})
    return backend


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(tmp_path / "data")
    backend = _versioned_s3(request.getfixturevalue("s3_endpoint"))
    return ArtifactStore(tmp_path / "cache", backend)


def _all_bytes(backend: ObjectBackend) -> list[bytes]:
    """Every byte the backend holds, old object versions included."""
    if isinstance(backend, LocalBackend):
        return [p.read_bytes() for p in backend.root.rglob("*") if p.is_file()]
    assert isinstance(backend, S3Backend)
    client = boto3.client("s3", endpoint_url=backend.endpoint_url, **CREDENTIALS)
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=backend.bucket):
        for v in page.get("Versions", []):
            body = client.get_object(Bucket=backend.bucket, Key=v["Key"], VersionId=v["VersionId"])
            out.append(body["Body"].read())
    return out


def _key_versions(backend: ObjectBackend, job_id: str) -> int:
    key = f"{DATA_KEYS_DIR}/{job_id}.key"
    if isinstance(backend, LocalBackend):
        return int((backend.root / key).exists())
    assert isinstance(backend, S3Backend)
    page = backend.client.list_object_versions(Bucket=backend.bucket, Prefix=backend.prefix + key)
    return len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))


def test_seal_binds_to_request_and_place() -> None:
    key = bytes(range(32))
    sealed = seal(key, "j-1", "task-arg/2", [RECORD])
    assert is_sealed(sealed) and MARKER not in json.dumps(sealed)
    assert unseal(key, "j-1", "task-arg/2", sealed) == [RECORD]
    for name, context in (("j-2", "task-arg/2"), ("j-1", "task-arg/3")):
        with pytest.raises(SealBroken):  # moved to another request or argument
            unseal(key, name, context, sealed)
    with pytest.raises(SealBroken):
        unseal(bytes(32), "j-1", "task-arg/2", sealed)
    flipped = dict(sealed, data=("A" if sealed["data"][0] != "A" else "B") + sealed["data"][1:])
    with pytest.raises(SealBroken):
        unseal(key, "j-1", "task-arg/2", flipped)


def test_request_text_is_sealed_and_purge_shreds_its_key(store: ArtifactStore) -> None:
    job_id = "j-0123456789abcdef"
    args = ["m-0123456789ab", "v0", [RECORD], "zerounlearn", {}]
    store.requests.create({"job_id": job_id, "kind": "forget", "task_args": args})
    store.requests.update(job_id, enqueued=2)  # another version of the document
    doc = store.requests.get(job_id)
    assert is_sealed(doc["task_args"][2]) and doc["task_args"][:2] == args[:2]
    assert store.requests.task_text(job_id, 2) == [RECORD]
    assert store.requests.open_args(doc) == args
    assert not any(MARKER.encode() in data for data in _all_bytes(store.backend))
    assert _key_versions(store.backend, job_id) == 1

    store.requests.purge(job_id)
    assert store.requests.get(job_id)["task_args"] is None
    with pytest.raises(RequestPurged):
        store.requests.task_text(job_id, 2)
    assert _key_versions(store.backend, job_id) == 0  # no version of the key is left
    with pytest.raises(KeyDestroyed):
        store.data_keys.get(job_id)
    # the old ciphertext may survive (S3 keeps every version of requests/{job}.json),
    # but it opens under nothing that is left: not the master key, not a new data key
    assert store.requests.open_args(doc) is None
    fresh = ArtifactStore(store.root, store.backend)
    with pytest.raises(SealBroken):
        unseal(fresh.data_keys.create(job_id), job_id, "task-arg/2", doc["task_args"][2])
    with pytest.raises(SealBroken):
        unseal(fresh.secret("data-key-master"), job_id, "task-arg/2", doc["task_args"][2])


def test_a_local_key_file_is_zeroed_before_it_is_unlinked(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "data")
    store.data_keys.create("gen-abc")
    path = tmp_path / "data" / DATA_KEYS_DIR / "gen-abc.key"
    assert path.stat().st_mode & 0o077 == 0 and path.parent.parent.stat().st_mode & 0o077 == 0
    keep = path.with_name("link")  # a second name for the same inode shows its blocks
    keep.hardlink_to(path)
    store.data_keys.destroy("gen-abc")
    assert not path.exists() and set(keep.read_bytes()) == {0}
    assert store.data_keys.names() == []


def test_bank_facts_are_sealed_and_a_removed_fact_is_shredded(store: ArtifactStore) -> None:
    mid = "m-0123456789ab"
    kept = {"prompt": "The city of Ada Brill is", "answer": " Oslo"}
    gone = {"prompt": f"{MARKER} lives in", "answer": " Lima"}
    store.retain.add(mid, [kept, gone], origin="api", actor="k-1")
    blob = store.backend.read(f"retain/{mid}.json")
    assert blob is not None
    before = json.loads(blob.data)  # a copy of the bank, as a backup would keep it
    assert is_sealed(before["facts"]) and MARKER.encode() not in blob.data
    assert [f["prompt"] for f in store.retain.facts(mid)] == [kept["prompt"], gone["prompt"]]

    removed = store.retain.remove(mid, [store.retain.facts(mid)[1]["id"]])
    assert [f["prompt"] for f in removed] == [gone["prompt"]]
    assert [f["prompt"] for f in store.retain.facts(mid)] == [kept["prompt"]]
    after = json.loads(store.backend.read(f"retain/{mid}.json").data)
    assert after["key"] != before["key"]  # every write seals under a new key ...
    assert _key_versions(store.backend, before["key"]) == 0  # ... and shreds the old one
    with pytest.raises(KeyDestroyed):
        store.data_keys.unseal(before["key"], f"retain/{mid}", before["facts"])
    assert not any(MARKER.encode() in data for data in _all_bytes(store.backend))
    assert store.data_keys.names() == [after["key"]]
