"""Service: end-to-end latency of a forget request, submit -> `succeeded`, on a real stack.

Redis (database --db, flushed), the API (`python -m app`) and one worker
(`python -m worker`, one torch thread) as their own processes. The model (the tiny
GPT-2, or SmolLM2 with --smollm2) is registered and prepared first (not timed; with
--smollm2 the data directory under .cache/bench-service/ is kept between runs, so the
conversion and the statistics are computed once). Then --requests forget requests of
one record each are sent one after the other on the same model, each waited for
(GET /v1/jobs/{id} every --poll s) before the next:

- client: seconds from the POST to seeing `succeeded` (poll granularity included);
- job document: queue wait (created_at -> started_at) and run (started_at -> finished_at);
- the worker's own figures when the job result has them (result.timings: queue_wait_s,
  load_s, compute_s, ...; result.model_cache_hit) and the per-phase job timings.

The second request shows a warm worker: its version is resident, so pick-up to compute
(load_s) should be well under a second.

    python bench/bench_service.py                     # tiny GPT-2 (trained once, ~1 min)
    python bench/bench_service.py --smollm2           # the built-in SmolLM2 (first run: minutes)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from bench.common import REPO, machine_info, md_table, write_results  # noqa: E402
from tests.support import processes  # noqa: E402

SMOLLM2 = "builtin:smollm2-135m-instruct"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smollm2", action="store_true", help="the built-in SmolLM2 (slow)")
    p.add_argument("--requests", type=int, default=2, help="requests in a row (2)")
    p.add_argument("--db", type=int, default=4, help="Redis database, flushed (4)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="store root (default: a temporary one; with --smollm2 "
                        ".cache/bench-service/smollm2, kept)")
    p.add_argument("--stats-samples", type=int, default=None,
                   help="ZEROUNLEARN_STATS_SAMPLES of the worker (tiny: 2000, SmolLM2: 20000)")
    p.add_argument("--seed-stats", type=Path, default=None,
                   help="copy cached statistics (*.safetensors, e.g. from "
                        ".cache/bench-stats) into the store first: a matching key skips "
                        "their computation in the prepare job")
    p.add_argument("--poll", type=float, default=0.05, help="status poll interval, s (0.05)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per job, s (3600)")
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (bench/results/service)")
    return p.parse_args(argv)


def seed_stats(source: Path, data_dir: Path) -> None:
    """Copy statistics files into the store's StatsCache directory (absent ones only)."""
    from store import ArtifactStore

    target = ArtifactStore(data_dir).stats_dir
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for path in sorted(source.glob("*.safetensors")):  # second moments, sampled tokens
        if not (target / path.name).exists():
            shutil.copyfile(path, target / path.name)
            copied += 1
    print(f"[service] seeded {copied} statistics file(s) from {source}", file=sys.stderr)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _gap(job: dict[str, Any], start: str, end: str) -> float | None:
    a, b = _epoch(job.get(start)), _epoch(job.get(end))
    return round(b - a, 3) if a is not None and b is not None else None


def model_and_records(smollm2: bool) -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:
    """(model source, one-record requests in order, hparams of the requests)."""
    keys = ("prompt", "subject", "answer")
    if smollm2:
        from zerounlearn.datasets import world_facts

        facts = world_facts()
        return SMOLLM2, [{k: f[k] for k in keys if f.get(k)} for f in facts], None
    from tests.support.tiny_model import TINY_REQUEST_HPARAMS, build_tiny_gpt2, tiny_facts

    source = build_tiny_gpt2(Path(processes.TEST_MODEL_ROOTS) / "tiny-gpt2")
    facts = tiny_facts()
    return str(source), [{k: f[k] for k in keys} for f in facts], dict(TINY_REQUEST_HPARAMS)


def ready_model(client: httpx.Client, source: str, timeout: float) -> tuple[str, float | None]:
    """A ready model for `source`: one already in the store, else registered now; returns
    (id, seconds spent preparing it here, None when reused)."""
    for model in client.get("/v1/models").json():
        if model["source"] == source and model["status"] == "ready":
            return model["id"], None
    start = time.perf_counter()
    created = client.post("/v1/models", json={"name": "bench", "source": source})
    created.raise_for_status()
    model = processes.wait_model_ready(client, created.json()["id"], timeout=timeout)
    if model["status"] != "ready":
        raise RuntimeError(f"model preparation failed: {model.get('error')}")
    return model["id"], round(time.perf_counter() - start, 1)


def one_request(client: httpx.Client, model_id: str, record: dict[str, Any],
                hparams: dict[str, Any] | None, poll: float, timeout: float) -> dict[str, Any]:
    body: dict[str, Any] = {"records": [record]}
    if hparams:
        body["hparams"] = hparams
    start = time.perf_counter()
    answer = client.post(f"/v1/models/{model_id}/forget", json=body)
    answer.raise_for_status()
    submitted = time.perf_counter() - start
    job_id = answer.json()["job_id"]
    deadline = start + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in processes.TERMINAL_JOB_STATUSES:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout:g} s")
        time.sleep(poll)
    total = time.perf_counter() - start
    result = job.get("result") or {}
    return {
        "job_id": job_id,
        "status": job["status"],
        "error": job.get("error"),
        "submit_s": round(submitted, 4),
        "client_total_s": round(total, 3),
        "queue_wait_s": _gap(job, "created_at", "started_at"),
        "run_s": _gap(job, "started_at", "finished_at"),
        "result_timings": result.get("timings"),
        "model_cache_hit": result.get("model_cache_hit"),
        "job_phase_timings": job.get("timings"),
        "version": result.get("version"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    samples = args.stats_samples or (20000 if args.smollm2 else processes.TEST_STATS_SAMPLES)
    keep = args.data_dir is not None or args.smollm2
    root = args.data_dir or (REPO / ".cache" / "bench-service" / "smollm2" if args.smollm2
                             else Path(tempfile.mkdtemp(prefix="zu-bench-service-")))
    root.mkdir(parents=True, exist_ok=True)
    source, records, hparams = model_and_records(args.smollm2)
    info = machine_info(model=source, worker_threads=1, stats_samples=samples)
    data_dir, log_dir = root / "data", root / "logs"
    worker_env = {"ZEROUNLEARN_STATS_SAMPLES": str(samples), "ZEROUNLEARN_TORCH_THREADS": "1"}
    api_env = {"ZEROUNLEARN_ADMIN_TOKEN": processes.TEST_ADMIN_TOKEN,
               "ZEROUNLEARN_MODEL_ROOTS": processes.TEST_MODEL_ROOTS}
    runs: list[dict[str, Any]] = []
    if args.seed_stats is not None:
        seed_stats(args.seed_stats, data_dir)
    try:
        with processes.redis_server() as base, processes.flushed_db(base, args.db) as url:
            api = processes.start_api(url, data_dir, log_dir, **api_env)
            worker = None
            try:
                worker = processes.start_worker(url, data_dir, log_dir, name="bench-w1",
                                                env=worker_env)
                with httpx.Client(base_url=api.extra["url"], timeout=60,
                                  headers=processes.auth_headers()) as client:
                    print(f"[service] preparing {source}", file=sys.stderr)
                    model_id, prepare_s = ready_model(client, source, args.timeout)
                    done = len(client.get("/v1/jobs", params={"model_id": model_id,
                                                              "limit": 1000}).json())
                    for i in range(args.requests):
                        record = records[(done + i) % len(records)]  # not forgotten before
                        run = one_request(client, model_id, record, hparams, args.poll,
                                          args.timeout)
                        runs.append(run)
                        print(f"[service] request {i + 1}: {run['status']} in "
                              f"{run['client_total_s']} s", file=sys.stderr)
            finally:
                if worker is not None:
                    worker.stop()
                api.stop()
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    data = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()},
            "prepare_s": prepare_s, "data_dir_reused": prepare_s is None, "requests": runs}
    md = markdown(data)
    print(md)
    json_path, _ = write_results("service-smollm2" if args.smollm2 else "service", data, md,
                                 args.out)
    print(f"[service] wrote {json_path}", file=sys.stderr)
    return 0


def markdown(data: dict[str, Any]) -> str:
    keys = sorted({k for r in data["requests"] for k in (r["result_timings"] or {})})
    rows = []
    for i, r in enumerate(data["requests"], start=1):
        t = r["result_timings"] or {}
        rows.append([i, r["status"], r["client_total_s"], r["submit_s"] * 1000,
                     r["queue_wait_s"], r["run_s"], *[t.get(k) for k in keys],
                     r["model_cache_hit"]])
    table = md_table(["request", "status", "submit -> succeeded s", "POST ms",
                      "queue wait s (job doc)", "run s (job doc)",
                      *[f"worker {k}" for k in keys], "model cache hit"], rows, digits=3)
    prep = (f"prepared here in {data['prepare_s']} s" if data["prepare_s"] is not None
            else "prepared in an earlier run (data directory reused)")
    phases = [r["job_phase_timings"] for r in data["requests"] if r.get("job_phase_timings")]
    extra = ""
    if phases:
        names = sorted({k for p in phases for k in p})
        extra = "\n\nJob phase timings (s, from the job document):\n\n" + md_table(
            ["request", *names],
            [[i, *[p.get(n) for n in names]] for i, p in enumerate(phases, start=1)], digits=3)
    return (f"Service end to end, model `{data['machine']['model']}` ({prep}); one worker, "
            f"one torch thread; one-record forget requests one after the other.\n\n"
            f"{table}{extra}\n")


if __name__ == "__main__":
    sys.exit(main())
