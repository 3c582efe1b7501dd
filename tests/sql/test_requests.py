"""Accepted requests in SQL: sealed text, settle, callbacks, purge; and privacy: the
request's text is in no database file (SQLite main file and WAL, PostgreSQL's data
directory), before or after the purge."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from store import Conflict, NotFound
from store.datakeys import is_sealed
from store.requests import RequestPurged
from store.sql import SqlMetadata
from store.sql.schema import Request
from tests.support.textsearch import files_under


def _request(job_id: str, text: str, callback: dict | None = None) -> dict:
    records = [{"prompt": f"Where does {text} live?", "answer": "12 Elm Street"}]
    return {"job_id": job_id, "kind": "forget", "model_id": "m-000000000001",
            "version": "v0", "actor": "k-1", "callback": callback,
            "task_args": ["m-000000000001", "v0", records, {"method": "zerounlearn"}],
            "record_hashes": ["c" * 64]}


def test_create_get_settle_and_pending(meta: SqlMetadata) -> None:
    doc = meta.requests.create(_request("j-0000000000000001", "Jane"))
    assert is_sealed(doc["task_args"][2]) and doc["task_args"][0] == "m-000000000001"
    assert meta.requests.get("j-0000000000000001") == doc
    assert meta.requests.task_text("j-0000000000000001", 2)[0]["prompt"] == \
        "Where does Jane live?"
    with pytest.raises(Conflict):
        meta.requests.create(_request("j-0000000000000001", "Jane"))
    meta.requests.create(_request("j-0000000000000002", "John"))
    assert meta.requests.pending_ids() == ["j-0000000000000001", "j-0000000000000002"]
    assert meta.requests.update("j-0000000000000002", enqueued=2)["enqueued"] == 2
    meta.requests.settle("j-0000000000000001")
    assert meta.requests.pending_ids() == ["j-0000000000000002"]
    assert meta.requests.get("j-0000000000000001") == doc  # still found
    assert [d["job_id"] for d in meta.requests.list()] == ["j-0000000000000002"]
    with pytest.raises(NotFound):
        meta.requests.update("j-0000000000000001", enqueued=3)  # settled
    with pytest.raises(NotFound):
        meta.requests.get("j-00000000000000ff")


def test_claim_callback_once_when_due(meta: SqlMetadata) -> None:
    callback = {"url": "http://127.0.0.1:1/cb", "state": "pending", "attempts": 0,
                "next_attempt_at": 100.0, "last_error": None}
    meta.requests.create(_request("j-0000000000000001", "Jane", callback))
    assert meta.requests.due_callbacks(99.0) == []
    assert meta.requests.claim_callback("j-0000000000000001", 99.0, 30.0) is None
    claimed = meta.requests.claim_callback("j-0000000000000001", 100.0, 30.0)
    assert claimed is not None and claimed["callback"]["next_attempt_at"] == 100.0
    assert meta.requests.claim_callback("j-0000000000000001", 101.0, 30.0) is None
    assert meta.requests.due_callbacks(130.0) == ["j-0000000000000001"]
    meta.requests.update("j-0000000000000001",
                         callback={**callback, "state": "delivered"})
    assert meta.requests.claim_callback("j-0000000000000001", 1e9, 30.0) is None


def _database_files(db_url: str, request: pytest.FixtureRequest) -> list[Path]:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        files = files_under(Path(str(url.database)).parent)  # main file, -wal, -shm
        assert any(p.name.endswith("-wal") for p in files)
        return files
    server = request.getfixturevalue("postgres")
    if server.data_dir is None:  # an external server: its files are not ours to read
        return []
    server.checkpoint()  # dirty pages written to the data files
    with psycopg.connect(url.set(drivername="postgresql")
                         .render_as_string(hide_password=False)) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()"
                           ).fetchone()[0]
    # this database's tables and indexes, and the WAL (every change of every database)
    return files_under(server.data_dir / "base" / str(oid), server.data_dir / "pg_wal")


def _found(files: list[Path], needles: list[str]) -> set[str]:
    """The needles in the files' raw bytes (PostgreSQL compresses only values over 2 kB,
    SQLite never; textsearch also looks inside zlib streams: slow on 16 MB WAL files)."""
    return {needle for path in files for needle in needles
            if needle.encode() in path.read_bytes()}


def test_request_text_never_in_database_files(
    meta: SqlMetadata, db_url: str, request: pytest.FixtureRequest
) -> None:
    marker = f"privacy-marker-{uuid.uuid4().hex}"
    control = f"plain-control-{uuid.uuid4().hex}"  # stored in the clear on purpose
    doc = _request("j-0000000000000001", marker)
    assert marker in json.dumps(doc["task_args"][2])  # the text to seal holds the marker
    meta.models.create({"name": control, "source": "s"})
    stored = meta.requests.create(doc)
    assert marker not in json.dumps(stored)
    assert marker in json.dumps(meta.requests.open_args(stored))  # sealed, and it opens
    with meta.db.read() as s:
        raw = s.scalar(select(Request.task_args))
    assert is_sealed(raw[2]) and marker not in json.dumps(raw)

    files = _database_files(db_url, request)
    if files:  # the search finds what is stored in the clear, and not the marker
        assert _found(files, [marker, control]) == {control}

    purged = meta.requests.purge("j-0000000000000001")
    assert purged["task_args"] is None and purged["purged_at"]
    assert meta.requests.open_args(meta.requests.get("j-0000000000000001")) is None
    with pytest.raises(RequestPurged):
        meta.requests.task_text("j-0000000000000001", 2)
    assert "j-0000000000000001" not in meta.requests.data_keys.names()
    with meta.db.read() as s:
        assert s.scalar(select(Request.task_args)) is None
    files = _database_files(db_url, request)
    if files:
        assert _found(files, [marker, control]) == {control}
