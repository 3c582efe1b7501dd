"""`python -m app.local_stack` with REDIS_URL unset: embedded Valkey + worker + API.

The demo model is replaced by the tiny GPT-2 (ZEROUNLEARN_DEMO_MODEL) so the stack's
registration and preparation path runs in seconds instead of SmolLM2's minutes.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.support import processes

pytestmark = pytest.mark.timeout(300)


def _headers(tmp_path: Path) -> dict[str, str]:
    """The admin key the stack generated (saved owner-only under the data dir)."""
    path = tmp_path / "data" / "secrets" / "admin-token"
    assert path.stat().st_mode & 0o077 == 0
    return processes.auth_headers(path.read_text().strip())


# The stack's own lines about the demo model (app/local_stack.py). Not just "ready:": the
# API logs "API ready: store ..." into the same output before the demo is registered.
DEMO_READY = "ready: forget something with POST"
DEMO_KNOWN = ") is registered: "


def _start_stack(tmp_path: Path, demo: str) -> tuple[processes.ServiceProcess, str]:
    port = processes.free_port()
    env = processes.service_env(None, tmp_path / "data", ZEROUNLEARN_DEMO_MODEL=demo)
    assert "REDIS_URL" not in env and "ZEROUNLEARN_ADMIN_TOKEN" not in env
    proc = processes.spawn(
        "local-stack", ["-m", "app.local_stack", "--port", str(port)], env, tmp_path / "logs"
    )
    return proc, f"http://127.0.0.1:{port}"


def _stop_and_check_nothing_left(
    proc: processes.ServiceProcess, sig: int, children: list[int]
) -> None:
    proc.signal(sig)
    try:
        code = proc.popen.wait(timeout=60)
    finally:
        proc.stop(kill=True)  # only acts if it is still running
    assert code == 0, proc.log_tail()
    processes.wait_until(
        lambda: not processes.pids_alive(children), 20, 0.2, "stack children gone"
    )
    assert "stopped" in proc.log_tail()


def test_stack_serves_registers_demo_and_stops_cleanly(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    proc, url = _start_stack(tmp_path, str(tiny_gpt2_dir))
    try:
        processes.wait_http_ok(f"{url}/healthz", proc, timeout=90)
        processes.wait_http_ok(f"{url}/readyz", proc, timeout=60)  # Redis and the store
        # the workers are reported, not required: both of the stack's come up
        processes.wait_http_ok(f"{url}/readyz/workers", proc, timeout=60)
        processes.wait_until(
            lambda: httpx.get(f"{url}/readyz").json()["checks"]["workers"]
            == {"alive": 1, "interactive": 2}, 60, 0.5, "both workers")

        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert "export TOKEN=zu_admin_" in proc.log_text()  # shown once, at generation
        headers = _headers(tmp_path)

        def demo_ready() -> bool:
            proc.check_alive()
            models = httpx.get(f"{url}/v1/models", headers=headers).json()
            return any(
                m["source"] == str(tiny_gpt2_dir) and m["status"] == "ready" for m in models
            )

        processes.wait_until(demo_ready, 120, 0.5, "demo model ready")
        processes.wait_until(lambda: DEMO_READY in proc.log_text(), 10, 0.2, "ready line")
        children = processes.descendants(proc.pid)
        assert len(children) >= 3, children  # the two workers and the Valkey server
        assert (tmp_path / "data" / "redis").is_dir()
    except BaseException:
        proc.stop(kill=True)
        raise
    _stop_and_check_nothing_left(proc, signal.SIGTERM, children)


def test_stack_stops_on_ctrl_c_and_does_not_register_twice(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    # first run registers the demo model; a second run on the same data dir must not
    for run in range(2):
        proc, url = _start_stack(tmp_path, str(tiny_gpt2_dir))
        try:
            processes.wait_http_ok(f"{url}/readyz", proc, timeout=90)
            processes.wait_until(
                lambda p=proc: DEMO_READY in p.log_text() or DEMO_KNOWN in p.log_text(),
                120, 0.5, "demo registration",
            )
            models = httpx.get(f"{url}/v1/models", headers=_headers(tmp_path)).json()
            assert len(models) == 1, models
            if run == 1:  # the saved key was reused, not shown again
                assert "export TOKEN=zu_admin_" not in proc.log_text()
            children = processes.descendants(proc.pid)
        except BaseException:
            proc.stop(kill=True)
            raise
        _stop_and_check_nothing_left(proc, signal.SIGINT, children)
        proc.log_path.rename(proc.log_path.with_suffix(f".{run}.log"))
