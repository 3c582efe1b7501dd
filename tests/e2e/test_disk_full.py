"""A full artifact store, with real processes: the data dir is a small tmpfs (we run as
root in CI) that is filled up before a forget job; without mount rights the worker runs
under RLIMIT_FSIZE instead (a per-file quota). Either way the job fails with
`storage_full`, no version or temporary file is left, the active version is unchanged,
and once space is back the same request succeeds."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.sql.engine import DATABASE_URL_ENV
from tests.support import processes
from tests.support.tiny_model import tiny_facts

pytestmark = pytest.mark.timeout(300)
TMPFS_SIZE = "24m"
LEFT_FREE = 96 * 1024
"""Bytes left free after the ballast: enough for job documents, not for a patch."""
FILE_LIMIT = 128 * 1024
"""RLIMIT_FSIZE of the fallback: above any job document, below a tiny-model patch."""


@contextlib.contextmanager
def small_filesystem(path: Path) -> Iterator[bool]:
    """Mount a tmpfs at `path`; yields False (nothing mounted) without mount rights."""
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("ZEROUNLEARN_TEST_NO_TMPFS"):  # exercise the fallback
        yield False
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(path)],
        capture_output=True, check=False,
    ).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(data_dir: Path) -> Path:
    """A ballast file that leaves LEFT_FREE bytes free on data_dir's filesystem."""
    stats = os.statvfs(data_dir)
    ballast = data_dir / "ballast.bin"
    size = stats.f_bavail * stats.f_frsize - LEFT_FREE
    with open(ballast, "wb") as fh:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            fh.write(chunk[: min(size, len(chunk))])
            size -= len(chunk)
    return ballast


def limit_file_size() -> None:  # runs in the worker child before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_full_store_fails_the_job_cleanly(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    # the metadata database on another volume (as PostgreSQL always is): a blob store
    # that is full must not keep the job's failure from being recorded
    database = os.environ.get(DATABASE_URL_ENV) or \
        f"sqlite:///{tmp_path / 'db' / 'metadata.sqlite3'}"
    with small_filesystem(tmp_path / "data") as mounted, processes.service_stack(
        tmp_path, db_name="disk-full-stack", api_env={DATABASE_URL_ENV: database},
        **{DATABASE_URL_ENV: database}
    ) as stack:
        c = stack.client
        response = c.post("/v1/models", json={"name": "t", "source": str(tiny_gpt2_dir)})
        model = processes.wait_model_ready(c, response.json()["id"])
        assert model["status"] == "ready", model
        mid = model["id"]
        if mounted:
            ballast = fill(stack.data_dir)
        else:
            stack.restart_worker(preexec_fn=limit_file_size)
        fact = tiny_facts()[0]
        body = {"records": [{"prompt": fact["prompt"], "subject": fact["subject"],
                             "answer": fact["answer"]}]}
        job = processes.wait_job(c, c.post(f"/v1/models/{mid}/forget", json=body).json()["job_id"])
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "storage_full", job["error"]
        assert [v["id"] for v in c.get(f"/v1/models/{mid}/versions").json()] == ["v0"]
        assert c.get(f"/v1/models/{mid}").json()["active_version"] == "v0"
        leftovers = [p for p in stack.data_dir.rglob(".tmp-*") if "locks" not in p.parts]
        assert leftovers == []
        patches = stack.data_dir / "models" / mid / "patches"  # no blob of a version
        assert not patches.exists() or not any(patches.iterdir())

        if mounted:  # space is back: the same request now succeeds
            ballast.unlink()
        else:
            stack.restart_worker()
        job = processes.wait_job(c, c.post(f"/v1/models/{mid}/forget", json=body).json()["job_id"])
        assert job["status"] == "succeeded", job
        assert c.get("/v1/audit/verify").json()["valid"] is True
