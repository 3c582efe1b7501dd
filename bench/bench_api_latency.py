"""API latency at a steady request rate: POST /v1/models/{id}/forget and GET /v1/jobs/{id}.

A real stack: the machine's Redis (database --db, flushed before and after; an embedded
Valkey when none answers) and the API as its own process (`python -m app`, uvicorn).
No worker by default, so accepted jobs just queue (what a submission benchmark wants);
`--worker` starts one on the tiny GPT-2 (it then runs the queued jobs during the
measurement, competing for the CPU). A submission is a real one: Redis ping, job
document, durable request and audit entry (each fsynced), then the RQ enqueue.

Open loop: requests are sent on a fixed clock (request i at t0 + i/rate), whatever the
answers do, from one asyncio loop with a pooled httpx.AsyncClient. Latency runs from the
*scheduled* send time to the answer, so a stalled server is charged for the requests
queued behind it (no coordinated omission). Phases: forget alone, status alone, both at
once. Per phase: p50/p90/p99/max per endpoint, achieved rate, errors, the server's own
mean time (its /metrics histogram) and the CPU used by the API, the load generator and
Redis, to tell a slow server from a starved machine.

    python bench/bench_api_latency.py                       # 100 req/s, 20 s per phase
    python bench/bench_api_latency.py --rate 50 --duration 10 --phases forget
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from redis import Redis  # noqa: E402

from bench.common import machine_info, md_table, percentile, write_results  # noqa: E402
from store import ArtifactStore  # noqa: E402
from tests.support import processes  # noqa: E402

FORGET_ROUTE = "/v1/models/{model_id}/forget"
STATUS_ROUTE = "/v1/jobs/{job_id}"
PHASES = {"forget": (True, False), "status": (False, True), "mixed": (True, True)}
"""Phase name -> (sends forget submissions, sends status reads)."""


@dataclass
class Sample:
    endpoint: str  # "forget" | "status"
    scheduled: float  # loop clock, s
    sent: float
    done: float
    status: int  # HTTP status, 0 on a transport error
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.done - self.scheduled


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="requests/s per endpoint (100)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (20)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of forget submissions before the phases, not counted (3)")
    p.add_argument("--phases", default="forget,status,mixed",
                   help="comma-separated: forget, status, mixed (forget,status,mixed)")
    p.add_argument("--connections", type=int, default=64,
                   help="most requests in flight, = client pool size (64)")
    p.add_argument("--max-wait", type=float, default=5.0,
                   help="a request not sent this many s after its time is dropped as "
                        "'overload' (5)")
    p.add_argument("--db", type=int, default=5, help="Redis database, flushed (5)")
    p.add_argument("--worker", action="store_true",
                   help="also run a worker (tiny GPT-2); default: none, jobs just queue")
    p.add_argument("--no-idempotency-key", action="store_true",
                   help="submit without an Idempotency-Key header (default: one per request)")
    p.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the API process (repeatable)")
    p.add_argument("--label", default="", help="a name for this run in the results")
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (bench/results/api_latency)")
    p.add_argument("--keep", action="store_true", help="keep the data and log directory")
    return p.parse_args(argv)


# ------------------------------------------------------------------ measurements
def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and every live process below it (the
    uvicorn workers with --workers > 1)."""
    ticks = 0
    for p in [pid, *processes.descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def fsync_probe_ms(directory: Path, count: int = 50) -> dict[str, float]:
    """p50/p90 ms of a small write + file fsync + directory fsync (what each store
    document costs the disk) in `directory`, right now."""
    directory.mkdir(parents=True, exist_ok=True)
    times = []
    for i in range(count):
        path = directory / f".fsync-probe-{i}"
        start = time.perf_counter()
        with open(path, "w") as fh:
            fh.write("x" * 500)
            fh.flush()
            os.fsync(fh.fileno())
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(1000 * (time.perf_counter() - start))
        path.unlink()
    return {"p50": round(percentile(times, 0.5), 2), "p90": round(percentile(times, 0.9), 2)}


def cpu_pressure() -> float | None:
    """Linux PSI: % of the last 60 s in which runnable tasks waited for a CPU."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(line.split("avg60=")[1].split()[0])


def redis_cpu_s(conn: Redis) -> float | None:
    """The Redis server's CPU seconds (shared with whatever else uses that server)."""
    try:
        info = conn.info("cpu")
    except Exception:  # noqa: BLE001 - an unknown server: no figure
        return None
    return float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))


_METRIC_RE = re.compile(
    r'^zerounlearn_http_request_duration_seconds_(sum|count)\{method="(\w+)",route="([^"]+)"\}'
    r"\s+([0-9.eE+-]+)$"
)


def server_times(client: httpx.Client) -> dict[tuple[str, str], dict[str, float]]:
    """(method, route) -> {"sum", "count"} of the API's request-duration histogram."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for line in client.get("/metrics").text.splitlines():
        m = _METRIC_RE.match(line)
        if m:
            out.setdefault((m.group(2), m.group(3)), {})[m.group(1)] = float(m.group(4))
    return out


def server_mean_ms(before: dict, after: dict, key: tuple[str, str]) -> float | None:
    a, b = after.get(key, {}), before.get(key, {})
    count = a.get("count", 0.0) - b.get("count", 0.0)
    if count <= 0:
        return None
    return 1000.0 * (a.get("sum", 0.0) - b.get("sum", 0.0)) / count


# -------------------------------------------------------------------- load driver
class Driver:
    """Open-loop request generator on one asyncio loop.

    At most `connections` requests are in flight (our own semaphore: httpcore's pool
    gets slow, quadratically, with thousands of requests waiting in it); a request still
    waiting for a connection `max_wait` s after its scheduled time is not sent and
    counts as an "overload" error, so an overloaded phase still ends."""

    def __init__(self, client: httpx.AsyncClient, model_id: str, idempotency: bool,
                 connections: int, max_wait: float) -> None:
        self.client = client
        self.model_id = model_id
        self.idempotency = idempotency
        self.slots = asyncio.Semaphore(connections)
        self.max_wait = max_wait
        self.job_ids: list[str] = []
        self.submitted = 0

    async def forget(self, scheduled: float, samples: list[Sample]) -> None:
        n = self.submitted
        self.submitted += 1
        body = {"records": [{"prompt": f"The locker code of bench person {n} is",
                             "subject": f"bench person {n}", "answer": f" {1000 + n % 9000}"}]}
        headers = {"Idempotency-Key": f"bench-{n}"} if self.idempotency else None
        await self._send("forget", scheduled, samples, 202, "POST",
                         f"/v1/models/{self.model_id}/forget", json=body, headers=headers)

    async def status(self, scheduled: float, samples: list[Sample], index: int) -> None:
        job = self.job_ids[index % len(self.job_ids)]
        await self._send("status", scheduled, samples, 200, "GET", f"/v1/jobs/{job}")

    async def _send(self, endpoint: str, scheduled: float, samples: list[Sample],
                    expected: int, method: str, url: str, **kwargs: Any) -> None:
        loop = asyncio.get_running_loop()
        status, error = 0, None
        async with self.slots:
            sent = loop.time()
            if sent - scheduled > self.max_wait:
                samples.append(Sample(endpoint, scheduled, sent, sent, 0, "overload"))
                return
            try:
                response = await self.client.request(method, url, **kwargs)
                status = response.status_code
                if status == expected and endpoint == "forget":
                    self.job_ids.append(response.json()["job_id"])
                elif status != expected:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
        samples.append(Sample(endpoint, scheduled, sent, loop.time(), status, error))

    async def phase(self, forget: bool, status: bool, rate: float,
                    duration: float) -> tuple[list[Sample], float]:
        """Send at `rate` per endpoint for `duration` s; (samples, phase start)."""
        loop = asyncio.get_running_loop()
        samples: list[Sample] = []
        pending: list[asyncio.Task] = []
        t0 = loop.time() + 0.05
        count = int(rate * duration)

        async def clock(endpoint: str) -> None:
            for i in range(count):
                at = t0 + i / rate
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if endpoint == "forget":
                    pending.append(asyncio.create_task(self.forget(at, samples)))
                else:
                    pending.append(asyncio.create_task(self.status(at, samples, i)))

        clocks = ([clock("forget")] if forget else []) + ([clock("status")] if status else [])
        await asyncio.gather(*clocks)
        await asyncio.gather(*pending)
        return samples, t0


def summarise(samples: list[Sample], endpoint: str, rate: float, t0: float) -> dict[str, Any]:
    mine = [s for s in samples if s.endpoint == endpoint]
    ok = [s for s in mine if s.error is None]
    # latency of the requests sent; those given up ("overload") are counted as errors
    lat = [1000.0 * s.latency for s in mine if s.error != "overload"] or [float("nan")]
    lag = [1000.0 * (s.sent - s.scheduled) for s in mine]
    finished = max(s.done for s in mine) - t0 if mine else 0.0
    errors: dict[str, int] = {}
    for s in mine:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    return {
        "requests": len(mine),
        "ok": len(ok),
        "errors": errors,
        "target_rate": rate,
        # answered (2xx) per second, from the phase start to its last answer
        "achieved_rate": round(len(ok) / finished, 1) if finished > 0 else None,
        "completed_by_s": round(finished, 2),
        "p50_ms": round(percentile(lat, 0.50), 2),
        "p90_ms": round(percentile(lat, 0.90), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "max_ms": round(max(lat), 2),
        "mean_ms": round(sum(lat) / len(lat), 2),
        # time between the scheduled send and getting a connection slot: a backlog
        "send_lag_p99_ms": round(percentile(lag, 0.99), 2),
        "send_lag_max_ms": round(max(lag), 2),
    }


# ---------------------------------------------------------------------- the stack
def model_source(root: Path, with_worker: bool) -> Path:
    """A model directory to register: the tiny GPT-2 when a worker will load it, else a
    config-only directory (no worker ever loads its weights)."""
    if with_worker:
        from tests.support.tiny_model import build_tiny_gpt2

        return build_tiny_gpt2(Path(processes.TEST_MODEL_ROOTS) / "tiny-gpt2")
    model_dir = root / "config-only-gpt2"
    model_dir.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2}
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def register_model(base_url: str, data_dir: Path, source: Path, with_worker: bool) -> str:
    headers = processes.auth_headers()
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as c:
        created = c.post("/v1/models", json={"name": "bench", "source": str(source)})
        created.raise_for_status()
        model_id = created.json()["id"]
        if with_worker:
            model = processes.wait_model_ready(c, model_id, timeout=600)
            if model["status"] != "ready":
                raise RuntimeError(f"model preparation failed: {model.get('error')}")
        else:  # no worker prepares it: mark it ready as its prepare job would
            ArtifactStore(data_dir).update_model(model_id, status="ready")
    return model_id


def api_environment(root: Path, extra: list[str]) -> dict[str, str]:
    """The API's settings: the test admin key and model roots; production defaults for
    the rest (reconciler every 5 s, not the tests' 0.5 s), except the rate limits: one
    key at 100 requests/s per endpoint is far above ZEROUNLEARN_RATE_LIMIT_PER_KEY's
    default, and this measures latency, not the limiter (--api-env sets them back)."""
    env = {
        "ZEROUNLEARN_ADMIN_TOKEN": processes.TEST_ADMIN_TOKEN,
        "ZEROUNLEARN_MODEL_ROOTS": os.pathsep.join([processes.TEST_MODEL_ROOTS, str(root)]),
        "ZEROUNLEARN_RATE_LIMIT_PER_KEY": "",
        "ZEROUNLEARN_RATE_LIMIT_PER_ADDRESS": "",
    }
    for item in extra:
        name, _, value = item.partition("=")
        env[name] = value
    return env


async def drive(args: argparse.Namespace, base_url: str, model_id: str, api_pid: int,
                redis: Redis) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=args.connections,
                          max_keepalive_connections=args.connections)
    results = []
    metrics_client = httpx.Client(base_url=base_url, timeout=30)
    async with httpx.AsyncClient(base_url=base_url, headers=processes.auth_headers(),
                                 limits=limits, timeout=30) as client:
        driver = Driver(client, model_id, not args.no_idempotency_key, args.connections,
                        args.max_wait)
        if args.warmup > 0:
            await driver.phase(True, False, args.rate, args.warmup)
        while len(driver.job_ids) < 20:  # jobs for the status reads to name
            await driver.forget(asyncio.get_running_loop().time(), [])
        for name in args.phases.split(","):
            forget, status = PHASES[name]
            await asyncio.sleep(1.0)  # let the previous phase's stragglers settle
            before = server_times(metrics_client)
            cpu_api, cpu_gen, cpu_redis = process_cpu_s(api_pid), time.process_time(), \
                redis_cpu_s(redis)
            wall = time.perf_counter()
            samples, t0 = await driver.phase(forget, status, args.rate, args.duration)
            wall = time.perf_counter() - wall
            after = server_times(metrics_client)
            redis_after = redis_cpu_s(redis)
            phase: dict[str, Any] = {
                "phase": name,
                "wall_s": round(wall, 2),
                "cpu_pressure_avg60": cpu_pressure(),
                "cpu_percent": {
                    "api": round(100 * (process_cpu_s(api_pid) - cpu_api) / wall, 1),
                    "generator": round(100 * (time.process_time() - cpu_gen) / wall, 1),
                    "redis": round(100 * (redis_after - cpu_redis) / wall, 1)
                    if redis_after is not None and cpu_redis is not None else None,
                },
                "endpoints": {},
            }
            for endpoint, route, method, on in (("forget", FORGET_ROUTE, "POST", forget),
                                                ("status", STATUS_ROUTE, "GET", status)):
                if on:
                    summary = summarise(samples, endpoint, args.rate, t0)
                    summary["server_mean_ms"] = server_mean_ms(before, after, (method, route))
                    if summary["server_mean_ms"] is not None:
                        summary["server_mean_ms"] = round(summary["server_mean_ms"], 2)
                    phase["endpoints"][endpoint] = summary
            results.append(phase)
            print(f"[api-latency] phase {name}: "
                  + "; ".join(f"{e} p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms"
                              for e, s in phase["endpoints"].items()), file=sys.stderr)
    metrics_client.close()
    return results


def markdown(args: argparse.Namespace, phases: list[dict[str, Any]], worker: bool,
             info: dict[str, Any]) -> str:
    several = any(e.startswith("ZEROUNLEARN_API_WORKERS=") and e.split("=", 1)[1] not in
                  ("", "1") for e in args.api_env)
    workers_note = (" (several API processes: the server mean is the one process that "
                    "answered the /metrics scrape)" if several else "")
    rows = []
    for ph in phases:
        for endpoint, s in ph["endpoints"].items():
            name = "POST forget" if endpoint == "forget" else "GET job"
            errs = sum(s["errors"].values())
            rows.append([ph["phase"], name, s["requests"], s["achieved_rate"], s["p50_ms"],
                         s["p90_ms"], s["p99_ms"], s["max_ms"], s["server_mean_ms"], errs,
                         ph["cpu_percent"]["api"], ph["cpu_percent"]["generator"],
                         ph["cpu_percent"]["redis"]])
    table = md_table(["phase", "endpoint", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms",
                      "max ms", "server mean ms", "errors", "API CPU %", "generator CPU %",
                      "Redis CPU %"], rows, digits=1)
    return (
        f"API latency{' (' + args.label + ')' if args.label else ''}: open loop at "
        f"{args.rate:g} req/s per endpoint, {args.duration:g} s per phase, "
        f"{args.connections} pooled connections; worker: {'one' if worker else 'none'}; "
        f"Idempotency-Key: {'no' if args.no_idempotency_key else 'yes'}. Latency from the "
        f"scheduled send time; server mean = the API's own request-duration histogram; "
        f"CPU % of one core{workers_note}. The machine while it ran: write + fsync of a "
        f"small file and its directory p50 {info['fsync_probe_ms_start']['p50']} ms before, "
        f"{info['fsync_probe_ms_end']['p50']} ms after; CPU pressure (PSI avg60: % of time "
        f"runnable tasks waited for a core) {info['cpu_pressure_avg60_start']}% at the start."
        f"\n\n{table}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name in args.phases.split(","):
        if name not in PHASES:
            raise SystemExit(f"unknown phase {name!r}; choose from {', '.join(PHASES)}")
    root = Path(tempfile.mkdtemp(prefix="zu-bench-api-"))
    info = machine_info(rate=args.rate, duration_s=args.duration, worker=args.worker,
                        label=args.label, cpu_pressure_avg60_start=cpu_pressure(),
                        fsync_probe_ms_start=fsync_probe_ms(root / "probe"))
    data_dir, log_dir = root / "data", root / "logs"
    with processes.redis_server() as base, processes.flushed_db(base, args.db) as url:
        api = processes.start_api(url, data_dir, log_dir, **api_environment(root, args.api_env))
        worker = None
        redis = Redis.from_url(url)
        try:
            if args.worker:
                worker = processes.start_worker(url, data_dir, log_dir, name="bench-w1",
                                                env={"ZEROUNLEARN_TORCH_THREADS": "1"})
            source = model_source(root, args.worker)
            model_id = register_model(api.extra["url"], data_dir, source, args.worker)
            phases = asyncio.run(drive(args, api.extra["url"], model_id, api.pid, redis))
        finally:
            redis.close()
            if worker is not None:
                worker.stop()
            api.stop()
    info["fsync_probe_ms_end"] = fsync_probe_ms(root / "probe")
    data = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()},
            "phases": phases}
    md = markdown(args, phases, args.worker, info)
    print(md)
    json_path, _ = write_results("api_latency", data, md, args.out)
    print(f"[api-latency] wrote {json_path}; data and logs in {root}"
          if args.keep else f"[api-latency] wrote {json_path}", file=sys.stderr)
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
