"""Real service processes for tests: Redis, `python -m worker`, `python -m app`.

Everything started here is stopped again: helpers are context managers, processes run
in their own process group (so a stop reaches their children), and their output goes
to a log file whose tail is shown when something does not come up.

Redis: each stack on a database of its own, leased by name from the one allocator
(tests/support/redis_dbs.py), on the tests' server or an embedded Valkey.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis import Redis

from store.sql.engine import DATABASE_URL_ENV
from tests.support.redis_dbs import redis_db

REPO = Path(__file__).resolve().parents[2]
TEST_STATS_SAMPLES = 2000
"""Statistics tokens for the tiny model: enough for its 512-wide MLP, seconds on CPU."""
TOY_MODEL_GATE = {
    "ZEROUNLEARN_GATE_MAX_PERPLEXITY_INCREASE": "1000",
    "ZEROUNLEARN_GATE_LIMIT_MAX_PERPLEXITY_INCREASE": "10000",
    "ZEROUNLEARN_GATE_MAX_EFFICACY": "100",
}
"""Quality gate of the test stacks (API and worker): the tiny GPT-2 knows no English, so
its perplexity on the built-in reference texts moves by tens of % either way on any edit,
and a 40-record edit of it forgets little when the records' neighbours are each other's
prompts. The neighbour and guard checks keep the server's defaults."""
TEST_ADMIN_TOKEN = "test-admin-token-" + "0123456789abcdef" * 2
"""The bootstrap admin key (ZEROUNLEARN_ADMIN_TOKEN) of the API processes started here."""
TEST_MODEL_ROOTS = os.environ.get("ZEROUNLEARN_TEST_CACHE", str(REPO / ".cache"))
"""Where test models live (the tiny GPT-2 is built under the test cache)."""


def auth_headers(token: str = TEST_ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_defaults(root: Path) -> dict[str, str]:
    """API settings of the test stacks: the admin token, model roots, a fast reconciler."""
    return {
        "ZEROUNLEARN_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "ZEROUNLEARN_MODEL_ROOTS": os.pathsep.join([TEST_MODEL_ROOTS, str(root)]),
        "ZEROUNLEARN_RECONCILE_INTERVAL_S": "0.5",
        "ZEROUNLEARN_RECONCILE_GRACE_S": "1",
        "ZEROUNLEARN_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
        "ZEROUNLEARN_CALLBACK_BACKOFF_S": "0.2",
    }


class ProcessFailed(RuntimeError):
    """A service process exited or did not become ready; the message has its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll `predicate` until it is true; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:g} s")


# -------------------------------------------------------------------- processes
@dataclass
class ServiceProcess:
    """A started subprocess with its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        """The whole log so far: for asserting a line is (or is not) there, which a tail
        cannot do once a busy process has logged past it."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessFailed(
                f"{self.name} exited with {self.popen.returncode}; log tail:\n{self.log_tail()}"
            )

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 15.0, *, kill: bool = False) -> int | None:
        """SIGTERM (or SIGKILL) the process group; SIGKILL what is left after timeout."""
        if self.alive():
            sig = signal.SIGKILL if kill else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        return self.popen.returncode


def service_env(redis_url: str | None, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a service process: ours, plus the test settings."""
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(
        {
            "ZEROUNLEARN_DATA_DIR": str(data_dir),
            "ZEROUNLEARN_TORCH_THREADS": "1",
            "ZEROUNLEARN_STATS_SAMPLES": str(TEST_STATS_SAMPLES),
            "ZEROUNLEARN_LOG_LEVEL": "INFO",
            **TOY_MODEL_GATE,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
            ),
        }
    )
    env.update(extra)
    return env


def spawn(
    name: str,
    args: list[str],
    env: dict[str, str],
    log_dir: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> ServiceProcess:
    """Start `python <args>` in the repository, in a new process group, logging to a file.

    preexec_fn runs in the child before exec (e.g. to set a resource limit)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    return ServiceProcess(name=name, popen=popen, log_path=log_path)


def start_worker(
    redis_url: str,
    data_dir: Path,
    log_dir: Path,
    *,
    name: str,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> ServiceProcess:
    """`python -m worker --name <name>`; returns once it is registered with RQ.

    env: extra environment variables (e.g. ZEROUNLEARN_STATS_SAMPLES).
    """
    proc = spawn(
        name,
        ["-m", "worker", "--name", name],
        service_env(redis_url, data_dir, **(env or {})),
        log_dir,
        preexec_fn,
    )
    conn = Redis.from_url(redis_url)
    try:
        wait_worker_registered(conn, name, proc, timeout)
    except BaseException:
        proc.stop(kill=True)
        raise
    finally:
        conn.close()
    return proc


def wait_worker_registered(
    conn: Redis, name: str, proc: ServiceProcess, timeout: float
) -> None:
    from rq.worker import Worker

    def registered() -> bool:
        proc.check_alive()
        return any(w.name == name for w in Worker.all(connection=conn))

    try:
        wait_until(registered, timeout, 0.2, f"worker {name} registered")
    except TimeoutError as exc:
        raise ProcessFailed(f"{exc}; log tail:\n{proc.log_tail()}") from None


def start_api(
    redis_url: str, data_dir: Path, log_dir: Path, *, timeout: float = 60.0, **extra_env: str
) -> ServiceProcess:
    """`python -m app` on a free port; returns once /healthz answers (extra["url"])."""
    port = free_port()
    proc = spawn(
        "api",
        ["-m", "app", "--host", "127.0.0.1", "--port", str(port)],
        service_env(redis_url, data_dir, **extra_env),
        log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    proc.extra["url"] = url
    try:
        wait_http_ok(f"{url}/healthz", proc, timeout)
    except BaseException:
        proc.stop(kill=True)
        raise
    return proc


@contextlib.contextmanager
def api_only(root: Path, db_name: str, **env: str) -> Iterator[ServiceProcess]:
    """`python -m app` alone (no worker) on a Redis database leased to `db_name`, with
    the test defaults plus `env`; stopped after the block. For tests of the HTTP edge."""
    with redis_db(db_name) as url:
        proc = start_api(url, root / "data", root / "logs", **{**api_defaults(root), **env})
        try:
            yield proc
        finally:
            proc.stop()


def wait_http_ok(url: str, proc: ServiceProcess | None, timeout: float) -> None:
    """Until GET url answers 200 (checking that proc still runs)."""

    def ok() -> bool:
        if proc is not None:
            proc.check_alive()
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ok, timeout, 0.2, f"{url} answering 200")
    except TimeoutError as exc:
        tail = proc.log_tail() if proc is not None else ""
        raise ProcessFailed(f"{exc}; log tail:\n{tail}") from None


def pids_alive(pids: list[int]) -> list[int]:
    """The pids among `pids` that still exist (zombies of our own children excluded)."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            alive.append(pid)
            continue
        state = _proc_state(pid)
        if state != "Z":
            alive.append(pid)
    return alive


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        current = todo.pop(0)
        out.append(current)
        todo.extend(children.get(current, []))
    return out


# ------------------------------------------------------------- a running stack
TERMINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass
class ServiceStack:
    """An API process and a worker process on one Redis database and data dir."""

    redis_url: str
    data_dir: Path
    log_dir: Path
    api: ServiceProcess
    worker: ServiceProcess
    client: httpx.Client
    worker_env: dict[str, str] = field(default_factory=dict)
    workers_started: int = 1
    api_env: dict[str, str] = field(default_factory=dict)

    def restart_worker(
        self,
        *,
        kill: bool = False,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """Stop the worker (SIGTERM, or SIGKILL) and start a fresh one (extra env: once)."""
        self.worker.stop(kill=kill)
        self.start_worker(env, preexec_fn)

    def start_worker(
        self, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        """Start a fresh worker (the current one must be stopped)."""
        self.workers_started += 1
        self.worker = start_worker(
            self.redis_url, self.data_dir, self.log_dir,
            name=f"test-w{self.workers_started}", env={**self.worker_env, **(env or {})},
            preexec_fn=preexec_fn,
        )

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_dir.glob("*.log"))


@contextlib.contextmanager
def stack_database() -> Iterator[str | None]:
    """The metadata database of one stack: ZEROUNLEARN_TEST_DATABASE=postgresql gives a
    fresh database on the test PostgreSQL server, set as ZEROUNLEARN_DATABASE_URL in
    this process for the block, so the API and the worker it starts (they inherit the
    environment) and the test's own ArtifactStore(data_dir) all use it. Default: None,
    SQLite in the data directory."""
    from tests.support.postgres import fresh_database_url

    url = fresh_database_url()
    if url is None:
        yield None
        return
    before = os.environ.get(DATABASE_URL_ENV)
    os.environ[DATABASE_URL_ENV] = url
    try:
        yield url
    finally:
        if before is None:
            os.environ.pop(DATABASE_URL_ENV, None)
        else:
            os.environ[DATABASE_URL_ENV] = before


@contextlib.contextmanager
def service_stack(
    root: Path, *, db_name: str, api_env: dict[str, str] | None = None, **worker_env: str,
) -> Iterator[ServiceStack]:
    """Redis (a database leased to `db_name`), `python -m app` and `python -m worker`;
    the client sends the admin key."""
    data_dir, log_dir = root / "data", root / "logs"
    data_dir.mkdir(parents=True, exist_ok=True)
    api_env = {**api_defaults(root), **(api_env or {})}
    with redis_db(db_name) as url, stack_database():
        api = start_api(url, data_dir, log_dir, **api_env)
        try:
            worker = start_worker(url, data_dir, log_dir, name="test-w1", env=worker_env)
        except BaseException:
            api.stop()
            raise
        client = httpx.Client(base_url=api.extra["url"], timeout=60.0, headers=auth_headers())
        stack = ServiceStack(
            url, data_dir, log_dir, api, worker, client, dict(worker_env), api_env=api_env
        )
        try:
            yield stack
        finally:
            client.close()
            stack.worker.stop()
            stack.api.stop()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300.0) -> dict:
    """Poll GET /v1/jobs/{id} until the job is terminal; return its document."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL_JOB_STATUSES:
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not finish in {timeout:g} s: {job}")


def register_ready(client: httpx.Client, source: str, name: str = "t") -> dict:
    """Register the model at `source` (201), wait for its prepare job; the ready model."""
    created = client.post("/v1/models", json={"name": name, "source": source})
    assert created.status_code == 201, created.text
    ready = wait_model_ready(client, created.json()["id"])
    assert ready["status"] == "ready", ready
    return ready


def wait_model_ready(client: httpx.Client, model_id: str, timeout: float = 300.0) -> dict:
    """Poll GET /v1/models/{id} until it is no longer "preparing"; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = client.get(f"/v1/models/{model_id}").json()
        if model["status"] != "preparing":
            return model
        time.sleep(0.5)
    raise AssertionError(f"model {model_id} still preparing after {timeout:g} s")
