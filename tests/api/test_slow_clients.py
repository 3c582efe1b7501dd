"""Slow and greedy clients against a real API process (`python -m app`, own Redis db), over
real sockets: slowloris connections are closed at the header deadline, a keyless request
that declares a 1 MB body is refused before any of it is read, a body trickled past its
deadline gets 408, and the API's memory stays bounded through all of it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import processes
from tests.support.rawhttp import close_all, closed_by_peer, connect, read_response, rss_mb

pytestmark = pytest.mark.timeout(300)
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
SLACK_S = 3.0  # accepting 200 connections on a shared 2-core machine
CONNECTIONS = 200
ONE_MB = 1_000_000


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.ServiceProcess]:
    root = tmp_path_factory.mktemp("slow")
    env = {"ZEROUNLEARN_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "ZEROUNLEARN_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
           "ZEROUNLEARN_MAX_BODY_BYTES": str(2 * ONE_MB)}
    with processes.api_only(root, "slow-clients-api", **env) as proc:
        yield proc


def _headers_only(path: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {length}\r\n\r\n").encode()


def _open_slowloris(url: str, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = connect(url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")  # headers never finish
        sock.setblocking(False)
        socks.append(sock)
    return socks


def _closed_now(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slowloris_connections_are_closed_at_the_header_deadline(
    api: processes.ServiceProcess,
) -> None:
    url = api.extra["url"]
    began = time.monotonic()
    socks = _open_slowloris(url, CONNECTIONS)
    closed_at: dict[int, float] = {}
    answered_meanwhile = False
    try:
        while len(closed_at) < len(socks) and time.monotonic() - began < 4 * HEADER_TIMEOUT_S:
            for i, sock in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    sock.send(b"X-Trickle: y\r\n")  # one header line every 0.25 s
                except OSError:
                    closed_at[i] = time.monotonic() - began
                    continue
                if _closed_now(sock):
                    closed_at[i] = time.monotonic() - began
            if not answered_meanwhile and len(closed_at) < len(socks):
                # the slow connections do not starve anyone else
                answered_meanwhile = httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            time.sleep(0.25)
    finally:
        close_all(socks)
    assert len(closed_at) == CONNECTIONS, f"{CONNECTIONS - len(closed_at)} still open"
    assert max(closed_at.values()) <= HEADER_TIMEOUT_S + SLACK_S, max(closed_at.values())
    assert min(closed_at.values()) >= HEADER_TIMEOUT_S * 0.9  # the deadline, not earlier
    assert answered_meanwhile


def test_a_kept_alive_connection_trickling_its_next_request_is_closed(
    api: processes.ServiceProcess,
) -> None:
    """The deadline starts again after each response (uvicorn's keep-alive timer stops
    at the first byte of the next request, and nothing else would close it)."""
    sock = connect(api.extra["url"])
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
        assert read_response(sock, timeout=5.0)[0] == 200
        ended = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.setblocking(False)
        while time.monotonic() - ended < HEADER_TIMEOUT_S + SLACK_S and not _closed_now(sock):
            try:
                sock.send(b"X-Trickle: y\r\n")
            except OSError:
                break
            time.sleep(0.25)
        assert _closed_now(sock) or _send_fails(sock)
        assert time.monotonic() - ended < HEADER_TIMEOUT_S + SLACK_S
    finally:
        sock.close()


def _send_fails(sock: socket.socket) -> bool:
    try:
        sock.send(b"X: y\r\n")
        return False
    except OSError:
        return True


def test_a_keyless_request_declaring_1mb_gets_401_before_its_body(
    api: processes.ServiceProcess,
) -> None:
    url = api.extra["url"]
    for token in (None, "zu_not-a-valid-key"):
        sock = connect(url)
        try:
            began = time.monotonic()
            sock.sendall(_headers_only("/v1/models", ONE_MB, token))  # no byte of the body
            status, headers, body = read_response(sock, timeout=2.0)
            assert time.monotonic() - began < 2.0
            assert status == 401 and headers["www-authenticate"] == "Bearer"
            assert json.loads(body)["error"]["code"] == "unauthorized"
            assert headers["connection"] == "close" and closed_by_peer(sock, 2.0)
        finally:
            sock.close()


def test_a_body_sent_too_slowly_gets_408_and_the_connection_closes(
    api: processes.ServiceProcess,
) -> None:
    sock = connect(api.extra["url"])
    try:
        began = time.monotonic()
        sock.sendall(_headers_only("/v1/models", 100, processes.TEST_ADMIN_TOKEN) + b'{"na')
        status, headers, body = read_response(sock, timeout=BODY_TIMEOUT_S + SLACK_S)
        assert time.monotonic() - began >= BODY_TIMEOUT_S * 0.9
        assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
        assert closed_by_peer(sock, 2.0)
    finally:
        sock.close()


def test_memory_stays_bounded_under_slow_and_keyless_floods(
    api: processes.ServiceProcess,
) -> None:
    """Before the fix each keyless 1 MB body was buffered: 200 of them took the API from
    81 to 289 MB. Now they are refused after their headers."""
    url = api.extra["url"]
    httpx.get(f"{url}/healthz")
    before = rss_mb(api.pid)
    chunk = b"x" * 65536
    for _ in range(2):
        slow = _open_slowloris(url, CONNECTIONS // 2)
        greedy = []
        for _ in range(CONNECTIONS):
            sock = connect(url)
            sock.sendall(_headers_only("/v1/models", ONE_MB))
            sock.setblocking(False)
            greedy.append(sock)
        for _ in range(14):  # up to ~900 KB of each body, as fast as the server takes it
            for sock in greedy:
                try:
                    sock.send(chunk)
                except OSError:
                    pass
        time.sleep(0.5)
        close_all(slow + greedy)
    time.sleep(1.0)
    grown = rss_mb(api.pid) - before
    api.check_alive()
    assert grown < 60, f"the API grew by {grown:.0f} MB"  # unfixed: +200 MB and more
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_headers_over_the_size_limit_are_refused(api: processes.ServiceProcess) -> None:
    sock = connect(api.extra["url"])
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * 20_000)
        assert closed_by_peer(sock, 5.0)  # uvicorn answers 400 and closes, never buffering
    finally:
        sock.close()


def test_the_settings_are_validated(tmp_path: Path) -> None:
    from app.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="ZEROUNLEARN_HEADER_TIMEOUT_S"):
        load_settings(header_timeout_s=0, data_dir=tmp_path)
    with pytest.raises(SettingsError, match="ZEROUNLEARN_RATE_LIMIT_PER_KEY"):
        load_settings(rate_limit_per_key="lots", data_dir=tmp_path)
