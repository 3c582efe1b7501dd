"""Import of a data directory written by today's code (store.ArtifactStore on the local
backend) into the database: every document the same, a second run changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from store import ArtifactStore
from store.sql import SqlMetadata
from store.sql.import_data_dir import ImportFailed, import_data_dir
from store.sql.schema import metadata

REPO = Path(__file__).resolve().parents[2]
SHA = "d" * 64


def _old_data_dir(root: Path) -> ArtifactStore:
    store = ArtifactStore(root)
    model = store.create_model({"name": "tiny", "source": "/models/tiny"})
    store.update_model(model["id"], status="ready", num_layers=2)
    store.publish_version(model["id"], {"method": None}, None)
    patch = root.parent / "patch.safetensors"
    patch.write_bytes(b"not really safetensors")
    store.publish_version(model["id"], {"parent": "v0", "method": "zerounlearn",
                                        "records": [{"sha256": SHA}]}, patch)
    store.lifecycle.add_seals(model["id"], {"v0": [{"version": "v1", "jobs": ["j-1"]}]})
    admin, _ = store.keys.create("admin", None, created_by=None)
    viewer, _ = store.keys.create("viewer", [model["id"]], created_by=admin["id"])
    store.keys.revoke(viewer["id"])
    for i, kind in enumerate(("forget", "verify", "forget")):
        job = store.create_job({"kind": kind, "model_id": model["id"], "version": "v0"})
        store.requests.create({
            "job_id": job["id"], "kind": kind, "model_id": model["id"], "version": "v0",
            "actor": admin["id"], "record_hashes": [SHA],
            "task_args": [model["id"], "v0", [{"prompt": f"secret {i}", "answer": "x"}],
                          [{"prompt": "ref", "answer": "y"}]],
            "callback": {"url": "http://127.0.0.1:9/cb", "state": "pending", "attempts": 0,
                         "next_attempt_at": 0.0, "last_error": None}})
        store.audit.append(admin["id"], "request.accepted", ids={"job": job["id"]},
                           record_hashes=[SHA], detail={"kind": kind})
        with store.requests.idempotency(f"{i}" * 64) as seen:
            assert seen is None
            store.requests.remember_idempotency(f"{i}" * 64, job["id"], "e" * 64)
        if i == 0:
            store.transition_job(job["id"], ["queued"], "running")
            store.transition_job(job["id"], ["running"], "succeeded", result={"v": "v1"})
            store.requests.purge(job["id"])
            store.requests.settle(job["id"])
    return store


def _tables(meta: SqlMetadata) -> dict[str, list[Any]]:
    with meta.db.read() as s:
        return {name: sorted(json.dumps(dict(row._mapping), sort_keys=True, default=str)
                             for row in s.execute(select(table)))
                for name, table in metadata.tables.items()}


def _same_documents(store: ArtifactStore, meta: SqlMetadata) -> None:
    assert meta.models.list() == store.list_models()
    for model in store.list_models():
        assert meta.versions.list(model["id"]) == store.list_versions(model["id"])
        assert meta.lifecycle.read(model["id"]) == store.lifecycle.read(model["id"])
    assert meta.jobs.list() == store.list_jobs()
    assert meta.keys.list() == store.keys.list()
    assert meta.audit.page(0, 1000)[0] == list(store.audit.entries())
    for job in store.list_jobs():
        assert meta.requests.get(job["id"]) == store.requests.get(job["id"])
    assert sorted(meta.requests.pending_ids()) == sorted(store.requests.pending_ids())
    for i in range(len(store.list_jobs())):
        with store.requests.idempotency(f"{i}" * 64) as old:
            new = meta.idempotency.get(f"{i}" * 64)
            assert new is not None and old is not None
            assert (new["job_id"], new["body_hash"]) == (old["job_id"], old["body_hash"])


def test_import_is_complete_and_idempotent(db_url: str, tmp_path: Path) -> None:
    store = _old_data_dir(tmp_path / "data")
    first = import_data_dir(store.root, db_url)
    assert first["audit"]["valid"] and first["audit"]["entries"] == 3
    assert first["counts"]["requests"] == {"added": 3, "present": 0}
    meta = SqlMetadata(db_url, store.data_keys)
    try:
        _same_documents(store, meta)
        # the sealed text still opens with the data directory's data keys (not purged)
        pending = meta.requests.pending_ids()
        assert meta.requests.task_text(pending[0], 2)[0]["prompt"].startswith("secret")
        before = _tables(meta)
        # the second run as the operator runs it: a real process, the command line
        done = subprocess.run(
            [sys.executable, "-m", "store.sql.import_data_dir", "--data-dir",
             str(store.root), "--url", db_url], cwd=REPO, capture_output=True, text=True,
            timeout=120)
        assert done.returncode == 0, done.stderr
        second = json.loads(done.stdout)
        assert all(c["added"] == 0 for c in second["counts"].values()), second["counts"]
        assert _tables(meta) == before
        assert meta.audit.append(None, "after.import")["seq"] == 4  # the chain goes on
        assert meta.audit.verify()["valid"]
    finally:
        meta.close()


def test_broken_chain_is_refused(db_url: str, tmp_path: Path) -> None:
    store = _old_data_dir(tmp_path / "data")
    assert store.audit.path is not None
    lines = store.audit.path.read_bytes().splitlines(keepends=True)
    store.audit.path.write_bytes(lines[0].replace(b"request.accepted", b"request.forged")
                                 + b"".join(lines[1:]))
    with pytest.raises(ImportFailed, match="broken at entry 1"):
        import_data_dir(store.root, db_url)
