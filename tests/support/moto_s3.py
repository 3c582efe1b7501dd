"""A real S3-compatible server on localhost for tests: moto's server, in a subprocess.

It serves one request at a time (werkzeug without threads): moto checks If-None-Match
and If-Match, then writes, without a lock, so under its threaded server two conditional
writes could both pass; served one by one they are atomic, as on AWS S3 or MinIO.

    python -m tests.support.moto_s3 PORT      # what `moto_s3_server()` runs
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.processes import REPO, free_port, wait_until

CREDENTIALS = {
    "aws_access_key_id": "zerounlearn-test",
    "aws_secret_access_key": "zerounlearn-test-secret",
    "region_name": "us-east-1",
}
ENV = {
    "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
    "AWS_DEFAULT_REGION": CREDENTIALS["region_name"],
}
"""Environment of service processes that use the test server."""


@contextlib.contextmanager
def moto_s3_server(log_dir: Path) -> Iterator[str]:
    """Start the server; yield its endpoint URL; stop it."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "moto.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.moto_s3", str(port)], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {(log_dir / 'moto.log').read_text()}")
        try:
            return httpx.get(f"{url}/moto-api/", timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60.0, 0.2, "moto server answering")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def new_bucket(endpoint_url: str) -> str:
    """A fresh bucket; returns the store URL s3://<bucket>/<prefix>."""
    import boto3

    bucket = f"zu-test-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=endpoint_url, **CREDENTIALS).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store"


def _serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    make_server("127.0.0.1", port, app, threaded=False,
                request_handler=MotoRequestHandler).serve_forever()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
