"""A full disk in the phases test_disk_full.py (a forget job) leaves out, with real
processes: a prepare job, an export job, and the API's own writes (keys, models,
accepted requests). Each gets a clear error code, publishes nothing half-written, and
the service keeps answering; once space is back the same call succeeds.

The full disk is a small tmpfs over the data directory (as test_disk_full.py; we run as
root in CI). Without mount rights the worker runs under RLIMIT_FSIZE instead, which
reaches the prepare and export phases; the API's database writes are small, so they
need the real full file system and are skipped without one."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from store.sql.engine import DATABASE_URL_ENV
from tests.e2e.test_disk_full import fill, limit_file_size, small_filesystem
from tests.support import processes
from tests.support.processes import ServiceStack

pytestmark = pytest.mark.timeout(600)
CLEAR_CODES = {"storage_full", "store_unavailable"}
"""What the API may answer a write the full store refused (503/507); never a bare 500."""


def _database_elsewhere(tmp_path: Path) -> str:
    """The metadata database on another volume (as PostgreSQL always is)."""
    return os.environ.get(DATABASE_URL_ENV) or \
        f"sqlite:///{tmp_path / 'db' / 'metadata.sqlite3'}"


def _leftovers(data_dir: Path) -> list[Path]:
    """Temporary files of unfinished writes (the lock directory's files excepted)."""
    return [p for p in data_dir.rglob(".tmp-*") if "locks" not in p.parts]


def _make_full(stack: ServiceStack, mounted: bool) -> Path | None:
    if mounted:
        return fill(stack.data_dir)
    stack.restart_worker(preexec_fn=limit_file_size)
    return None


def _make_room(stack: ServiceStack, ballast: Path | None) -> None:
    if ballast is not None:
        ballast.unlink()
    else:
        stack.restart_worker()


def _still_answers(stack: ServiceStack) -> None:
    c = stack.client
    assert c.get("/healthz").status_code == 200
    assert c.get("/v1/models").status_code == 200
    stack.worker.check_alive()
    stack.api.check_alive()


def test_full_disk_fails_prepare_and_export_cleanly(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    database = _database_elsewhere(tmp_path)
    with small_filesystem(tmp_path / "data") as mounted, processes.service_stack(
        tmp_path, db_name="promise-disk-full-jobs", api_env={DATABASE_URL_ENV: database},
        **{DATABASE_URL_ENV: database}
    ) as stack:
        c = stack.client
        # prepare: its statistics do not fit
        ballast = _make_full(stack, mounted)
        created = c.post("/v1/models", json={"name": "full", "source": str(tiny_gpt2_dir)})
        assert created.status_code == 201, created.text
        failed = processes.wait_model_ready(c, created.json()["id"])
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "storage_full", failed["error"]
        prepare = [j for j in c.get("/v1/jobs").json() if j["model_id"] == failed["id"]]
        assert [(j["kind"], j["status"], j["error"]["code"]) for j in prepare] == [
            ("prepare", "failed", "storage_full")]
        assert _leftovers(stack.data_dir) == []
        _still_answers(stack)

        _make_room(stack, ballast)  # the same registration now prepares
        model = processes.register_ready(c, str(tiny_gpt2_dir), name="roomy")
        mid = model["id"]

        # export: the checkpoint does not fit
        ballast = _make_full(stack, mounted)
        response = c.post(f"/v1/models/{mid}/versions/v0/export")
        assert response.status_code == 202, response.text
        job = processes.wait_job(c, response.json()["job_id"])
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "storage_full", job["error"]
        exports = stack.data_dir / "exports" / mid
        assert not exports.exists() or not any(exports.iterdir()), list(exports.iterdir())
        assert _leftovers(stack.data_dir) == []
        _still_answers(stack)

        _make_room(stack, ballast)
        job = processes.wait_job(c, c.post(f"/v1/models/{mid}/versions/v0/export")
                                 .json()["job_id"])
        assert job["status"] == "succeeded", job
        assert (Path(job["result"]["path"]) / "zerounlearn-export.json").is_file()
        assert c.get("/v1/audit/verify").json()["valid"] is True


def _fill_completely(data_dir: Path) -> Path:
    """A ballast that takes every free byte (ENOSPC reached) of data_dir's file system."""
    ballast = data_dir / "ballast-rest.bin"
    with open(ballast, "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            try:
                while True:
                    fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return ballast


def _writes(stack: ServiceStack, mid: str, tiny_gpt2_dir: Path) -> dict[str, httpx.Response]:
    """One call of each kind of API write, each on a connection of its own (uvicorn
    closes a connection after an unhandled error: the next call must not meet that)."""
    record = {"prompt": "The secret code of Clara Lindqvist is", "answer": " 8857"}
    calls = {
        "key": ("/v1/keys", {"role": "viewer"}),
        "model": ("/v1/models", {"name": "more", "source": str(tiny_gpt2_dir)}),
        "forget": (f"/v1/models/{mid}/forget", {"records": [record]}),
    }
    url = stack.api.extra["url"]
    return {name: httpx.post(f"{url}{path}", json=body, headers=processes.auth_headers(),
                             timeout=60.0)
            for name, (path, body) in calls.items()}


def _state(stack: ServiceStack) -> dict[str, Any]:
    c = stack.client
    conn = Redis.from_url(stack.redis_url)
    try:
        queued = conn.llen("rq:queue:zerounlearn-cpu")
    finally:
        conn.close()
    return {"jobs": sorted(j["id"] for j in c.get("/v1/jobs", params={"limit": 500}).json()),
            "models": sorted(m["id"] for m in c.get("/v1/models").json()),
            "keys": sorted(k["id"] for k in c.get("/v1/keys").json()),
            "queued": queued}


@pytest.fixture(scope="module")
def api_writes_on_a_full_disk(
    tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path
) -> dict[str, Any]:
    """One run of the API's writes on a full data volume (the SQLite metadata database
    on it): the refused answers, and the state before, during and after."""
    root = tmp_path_factory.mktemp("disk-full-api")
    with small_filesystem(root / "data") as mounted:
        if not mounted:
            pytest.skip("needs mount rights for a small tmpfs: the API's database writes "
                        "are too small for a file size limit")
        with processes.service_stack(root, db_name="promise-disk-full-api") as stack:
            c = stack.client
            if os.environ.get(DATABASE_URL_ENV):
                pytest.skip("the metadata database is PostgreSQL, not on the data volume")
            mid = processes.register_ready(c, str(tiny_gpt2_dir))["id"]
            stack.worker.stop()  # accepted jobs stay queued: the queue counts them
            before = _state(stack)
            ballast = _fill_completely(stack.data_dir)
            refused = _writes(stack, mid, tiny_gpt2_dir)
            answering = {"healthz": c.get("/healthz").status_code,
                         "models": c.get("/v1/models").status_code,
                         "alive": stack.api.alive()}
            ballast.unlink()
            after = _state(stack)
            leftovers = _leftovers(stack.data_dir)
            accepted = _writes(stack, mid, tiny_gpt2_dir)
            valid = c.get("/v1/audit/verify").json()["valid"]
    return {"before": before, "after": after, "refused": refused, "answering": answering,
            "leftovers": leftovers, "accepted": accepted, "audit_valid": valid}


def test_full_disk_api_writes_leave_nothing_and_the_service_recovers(
    api_writes_on_a_full_disk: dict[str, Any],
) -> None:
    run = api_writes_on_a_full_disk
    assert all(r.status_code >= 500 for r in run["refused"].values()), run["refused"]
    assert run["answering"] == {"healthz": 200, "models": 200, "alive": True}
    # nothing of the refused writes was left behind, half or whole
    assert run["after"] == run["before"]
    assert run["leftovers"] == []
    assert {n: r.status_code for n, r in run["accepted"].items()} == {
        "key": 201, "model": 201, "forget": 202}
    assert run["audit_valid"] is True


def test_full_disk_api_writes_answer_a_clear_code(
    api_writes_on_a_full_disk: dict[str, Any],
) -> None:
    answers = {n: (r.status_code, r.json()["error"]["code"])
               for n, r in api_writes_on_a_full_disk["refused"].items()}
    assert all(status in (503, 507) and code in CLEAR_CODES
               for status, code in answers.values()), answers
