"""Import of a data directory written by the document store (before metadata moved to
SQL): a copy of tests/fixtures/datadir-v1 (see make_datadir_v1.py) into the database:
every document the same, patches where the store now reads them, the pending request's
text still opens, a second run (the operator's command line) changes nothing."""

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
from store.sql.legacy import LegacyDataDir, has_documents
from store.sql.schema import metadata
from tests.support.datadir_v1 import copy_datadir_v1

REPO = Path(__file__).resolve().parents[2]
MARKER = "zu-fixture-marker-7f3a9c"  # make_datadir_v1.MARKER: the pending request's text
MODEL = "m-00000000f1a0"
PENDING = ("j-0000000000000002", "j-0000000000000003")


@pytest.fixture
def old_dir(tmp_path: Path) -> Path:
    target = tmp_path / "data"
    copy_datadir_v1(target)
    return target


def _tables(meta: SqlMetadata) -> dict[str, list[Any]]:
    with meta.db.read() as s:
        return {name: sorted(json.dumps(dict(row._mapping), sort_keys=True, default=str)
                             for row in s.execute(select(table)))
                for name, table in metadata.tables.items()}


def _same_documents(old: LegacyDataDir, meta: SqlMetadata) -> None:
    assert meta.models.list() == old.models()
    for model in old.models():
        assert meta.versions.list(model["id"]) == [m for m, _ in old.versions(model["id"])]
        assert meta.lifecycle.read(model["id"]) == old.lifecycle(model["id"])
    assert meta.jobs.list() == old.jobs()
    assert {j["status"] for j in meta.jobs.list()} == {"queued", "running", "succeeded",
                                                       "failed", "cancelled"}
    assert meta.keys.list() == old.keys()
    lines = [json.loads(line) for line in old.audit_lines()]
    assert meta.audit.page(0, 1000)[0] == lines
    for settled, doc in old.requests():
        assert meta.requests.get(doc["job_id"]) == doc
        assert meta.requests.is_settled(doc["job_id"]) == settled
    assert sorted(meta.requests.pending_ids()) == list(PENDING)
    for key_hash, doc in old.idempotency():
        with meta.db.read() as s:
            row = s.execute(select(metadata.tables["idempotency"]).where(
                metadata.tables["idempotency"].c.key_hash == key_hash)).one()
        assert (row.job_id, row.body_hash) == (doc["job_id"], doc["body_hash"])


def test_import_is_complete_and_idempotent(db_url: str, old_dir: Path) -> None:
    assert has_documents(old_dir)
    first = import_data_dir(old_dir, db_url)
    assert first["audit"]["valid"] and first["audit"]["entries"] == 5
    assert first["counts"]["requests"] == {"added": 3, "present": 0}
    assert first["counts"]["jobs"] == {"added": 5, "present": 0}
    store = ArtifactStore(old_dir, database_url=db_url)
    meta = store.meta
    try:
        _same_documents(LegacyDataDir(old_dir), meta)
        # the patch is where the store reads it now, byte for byte the old file
        patch = store.patch_path(MODEL, "v1")
        assert patch.read_bytes() == (old_dir / "models" / MODEL / "versions" / "v1"
                                      / "patch.safetensors").read_bytes()
        assert store.lifecycle.read(MODEL)["versions"]["v0"]["sealed_by"][0]["version"] == "v1"
        # the sealed text still opens with the data directory's data keys (not purged)
        assert meta.requests.task_text(PENDING[1], 2)[0]["prompt"] == MARKER
        assert meta.keys.authenticate("zu_fixture_admin") is not None
        assert meta.keys.authenticate("zu_fixture_viewer") is None  # revoked
        before = _tables(meta)
        # the second run as the operator runs it: a real process, the command line
        done = subprocess.run(
            [sys.executable, "-m", "store.sql.import_data_dir", "--data-dir",
             str(old_dir), "--url", db_url], cwd=REPO, capture_output=True, text=True,
            timeout=120)
        assert done.returncode == 0, done.stderr
        second = json.loads(done.stdout)
        assert all(c["added"] == 0 for c in second["counts"].values()), second["counts"]
        assert _tables(meta) == before
        assert meta.audit.append(None, "after.import")["seq"] == 6  # the chain goes on
        assert meta.audit.verify()["valid"]
    finally:
        store.close()


def test_broken_chain_is_refused(db_url: str, old_dir: Path) -> None:
    log = old_dir / "audit" / "log.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0].replace(b"key.revoked", b"key.forged") + b"".join(lines[1:]))
    with pytest.raises(ImportFailed, match="broken at entry 1"):
        import_data_dir(old_dir, db_url)
