"""Beyond ZEROUNLEARN_MAX_CONNECTIONS a real API process (`python -m app`, own Redis db)
answers 503 in the API's error shape with Retry-After, at once, without reading the body
the request declares, and closes that connection; the liveness probe is still answered;
once the held connections go, requests are served again. Raw sockets
(tests/support/rawhttp.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import processes
from tests.support.rawhttp import close_all, closed_by_peer, connect, read_response

pytestmark = pytest.mark.timeout(120)
MAX_CONNECTIONS = 4
ONE_MB = 1_000_000


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.ServiceProcess]:
    root = tmp_path_factory.mktemp("limit")
    env = {"ZEROUNLEARN_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
           # the held connections must outlive the test, not the header deadline
           "ZEROUNLEARN_HEADER_TIMEOUT_S": "60"}
    with processes.api_only(root, "connection-limit-api", **env) as proc:
        yield proc


def _hold(url: str, n: int) -> list[socket.socket]:
    """`n` open connections that never send a request."""
    socks = [connect(url) for _ in range(n)]
    time.sleep(0.5)  # accepted by the server's loop
    return socks


def test_beyond_the_limit_the_answer_is_a_json_503_with_retry_after(
    api: processes.ServiceProcess,
) -> None:
    url = api.extra["url"]
    held = _hold(url, MAX_CONNECTIONS)
    sock = connect(url)
    try:
        # a body of 1 MB is declared and never sent: the answer must not wait for it
        sock.sendall(b"POST /v1/models HTTP/1.1\r\nHost: api\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n" % ONE_MB)
        began = time.monotonic()
        status, headers, body = read_response(sock, timeout=5.0)
        took = time.monotonic() - began
        assert status == 503, (status, headers, body)
        assert headers["content-type"] == "application/json", headers
        assert headers["retry-after"] == "1"
        error = json.loads(body)["error"]
        assert error["code"] == "overloaded"
        assert f"limit of {MAX_CONNECTIONS}" in error["message"]
        assert "ZEROUNLEARN_MAX_CONNECTIONS" in error["message"]
        assert took < 2.0, took
        assert headers.get("connection") == "close"
        assert closed_by_peer(sock, timeout=3.0)
    finally:
        close_all([sock, *held])


def test_probes_are_answered_at_the_limit_and_requests_once_below_it(
    api: processes.ServiceProcess,
) -> None:
    url = api.extra["url"]
    held = _hold(url, MAX_CONNECTIONS)
    try:
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 503
        # a busy process is alive: the orchestrator must not restart it
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        close_all(held)
    processes.wait_until(lambda: httpx.get(f"{url}/v1/models", timeout=5).status_code == 401,
                         5, 0.2, "served again (401: no key) once the held connections closed")
