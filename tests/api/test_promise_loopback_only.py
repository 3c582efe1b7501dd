"""README "Security model": with ZEROUNLEARN_AUTH=disabled, `python -m app` refuses
non-loopback hosts. Real processes: the refusal is an exit with code 2 and a clear log
line before anything listens; the same host with authentication on, and a loopback host
with it off, do come up (so the refusal is the auth switch's doing, not the host's)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.support import processes
from tests.support.redis_dbs import NEVER_CONTACTED, redis_db

pytestmark = pytest.mark.timeout(180)
REFUSAL = "ZEROUNLEARN_AUTH=disabled is for development: refusing to listen on"
EXIT_TIMEOUT_S = 60.0


def _spawn_api(tmp_path: Path, host: str, auth: str, *extra: str) -> tuple[
    processes.ServiceProcess, int
]:
    """`python -m app --host <host>` on a free port; REDIS_URL is set (no embedded server)
    and never contacted before the host check."""
    port = processes.free_port()
    env = processes.service_env(NEVER_CONTACTED, tmp_path / "data",
                                **processes.api_defaults(tmp_path), ZEROUNLEARN_AUTH=auth)
    proc = processes.spawn(f"api-{auth}-{host.replace(':', '_') or 'empty'}",
                           ["-m", "app", "--host", host, "--port", str(port), *extra],
                           env, tmp_path / "logs")
    return proc, port


def _listening(port: int) -> bool:
    """Whether anything accepts TCP on 127.0.0.1 or ::1 at `port` (a wildcard bind would)."""
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                if sock.connect_ex((address, port)) == 0:
                    return True
            except OSError:  # no IPv6 on this machine
                continue
    return False


@pytest.mark.parametrize(
    ("host", "extra"),
    [("0.0.0.0", ()), ("::", ()), ("0.0.0.0", ("--workers", "2"))],
    ids=["ipv4-any", "ipv6-any", "ipv4-any-two-workers"],
)
def test_auth_disabled_refuses_a_non_loopback_host(
    tmp_path: Path, host: str, extra: tuple[str, ...]
) -> None:
    proc, port = _spawn_api(tmp_path, host, "disabled", *extra)
    try:
        # it either exits (the promise) or comes up listening (broken)
        processes.wait_until(lambda: not proc.alive() or _listening(port), EXIT_TIMEOUT_S,
                             0.2, "exit or listen")
        assert not _listening(port), f"an unauthenticated API listens on {host}"
        code = proc.popen.wait(timeout=10)
    finally:
        proc.stop(kill=True)
    assert code == 2, proc.log_tail()
    log = proc.log_text()
    assert REFUSAL in log and host in log, log
    assert "Uvicorn running" not in log


def test_auth_enabled_serves_the_same_host(tmp_path: Path) -> None:
    proc, port = _spawn_api(tmp_path, "0.0.0.0", "enabled")
    try:
        processes.wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
    finally:
        proc.stop()
    assert REFUSAL not in proc.log_text()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_auth_disabled_serves_loopback(tmp_path: Path, host: str) -> None:
    proc, port = _spawn_api(tmp_path, host, "disabled")
    try:
        processes.wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        # no key needed, as promised for development
        models = httpx.get(f"http://127.0.0.1:{port}/v1/keys/me", timeout=10)
        assert models.status_code == 200, models.text
    finally:
        proc.stop()


def test_local_stack_with_auth_disabled_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    """The local stack runs the same API: the same promise must hold for it."""
    port = processes.free_port()
    with redis_db("promise-loopback-local-stack") as url:
        env = processes.service_env(url, tmp_path / "data", ZEROUNLEARN_AUTH="disabled",
                                    ZEROUNLEARN_DEMO_MODEL="none",
                                    ZEROUNLEARN_INTERACTIVE_WORKER="0")
        proc = processes.spawn("local-stack", ["-m", "app.local_stack", "--host", "0.0.0.0",
                                               "--port", str(port)], env, tmp_path / "logs")
        try:
            # it either exits (the promise) or comes up listening (the bug)
            processes.wait_until(lambda: not proc.alive() or _listening(port),
                                 EXIT_TIMEOUT_S, 0.2, "exit or listen")
            assert not _listening(port), "an unauthenticated API listens on 0.0.0.0"
            assert proc.popen.wait(timeout=10) == 2, proc.log_tail()
            assert REFUSAL in proc.log_text()
        finally:
            proc.stop()
