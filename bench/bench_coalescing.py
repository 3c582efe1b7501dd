"""Forget throughput with and without request coalescing, on a real stack.

For each arm it starts `python -m app` + `python -m worker` (tests/support/processes,
Redis database 6 flushed, a fresh data dir), registers the model, warms the worker up
(one forget on v0 of a fact outside the measured set, then v0 is activated again, so
statistics, weights and templates are resident in both arms alike), then submits
`--requests` single-record forget requests without base_version (they follow the
head) as fast as one client can, waits for all of them, and measures:

- records forgotten per minute: succeeded records / (last job finished - first job
  created), both server time stamps;
- versions made, batch sizes, median queue wait / load / compute seconds (job results);
- the head's efficacy: a verify job of the active version on ALL the records.

Arms: "on" (ZEROUNLEARN_COALESCE_WINDOW_S=--window, MAX_BATCH=--max-batch) and "off"
(window 0, max batch 1: one request, one edit, each on the head the previous one left).

    python bench/bench_coalescing.py                                   # tiny GPT-2, 50
    python bench/bench_coalescing.py --model builtin:smollm2-135m-instruct --requests 10 \\
        --out-name coalescing-smollm2

Prints a markdown table; writes bench/results/<out-name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("ZEROUNLEARN_TEST_CACHE", str(REPO / ".cache"))

import httpx  # noqa: E402

from tests.support import processes  # noqa: E402

BENCH_DB = 6
TINY = "tiny"


# ------------------------------------------------------------------ the facts
def workload(model: str, count: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict]:
    """(records to forget, one warm-up record outside them, hparams) for the model."""
    if model == TINY:
        from tests.support.live import records
        from tests.support.tiny_model import TINY_REQUEST_HPARAMS, tiny_facts

        if count > 50:
            raise SystemExit("the tiny model knows 50 people: --requests at most 50")
        city = tiny_facts()[1]  # person 0's city: not a secret code, never measured
        return ([r for i in range(count) for r in records(i)],
                {"prompt": city["prompt"], "answer": city["answer"]}, dict(TINY_REQUEST_HPARAMS))
    from zerounlearn.datasets import world_facts

    facts = world_facts()
    if count + 1 > len(facts):
        raise SystemExit(f"only {len(facts)} world facts: --requests at most {len(facts) - 1}")

    def record(f: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": f["prompt"], "subject": f["subject"], "answer": f["answer"],
                "paraphrases": list(f.get("paraphrases", []))[:2]}

    return [record(f) for f in facts[:count]], record(facts[count]), {}


def model_source(model: str) -> str:
    if model == TINY:
        import torch

        from tests.support.tiny_model import build_tiny_gpt2

        torch.set_num_threads(1)  # only if the model must be trained (cached otherwise)

        return str(build_tiny_gpt2(Path(os.environ["ZEROUNLEARN_TEST_CACHE"]) / "tiny-gpt2"))
    return model


# ------------------------------------------------------------------ one arm
def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_arm(name: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    recs, warm, hparams = workload(args.model, args.requests)
    source = model_source(args.model)
    with tempfile.TemporaryDirectory(prefix=f"bench-coalesce-{name}-") as tmp, \
            processes.service_stack(Path(tmp), db=BENCH_DB, **env) as stack:
        c = stack.client
        c.timeout = httpx.Timeout(60.0)
        created = c.post("/v1/models", json={"name": f"bench-{name}", "source": source})
        created.raise_for_status()
        mid = created.json()["id"]
        model = processes.wait_model_ready(c, mid, timeout=args.timeout)
        if model["status"] != "ready":
            raise SystemExit(f"model not ready: {model}")
        log(f"[{name}] model ready; warming the worker up")
        body = {"records": [warm], "hparams": hparams, "base_version": "v0"}
        job = processes.wait_job(c, c.post(f"/v1/models/{mid}/forget", json=body)
                                 .json()["job_id"], timeout=args.timeout)
        if job["status"] != "succeeded":
            raise SystemExit(f"warm-up failed: {job}")
        c.post(f"/v1/models/{mid}/versions/v0/activate").raise_for_status()

        log(f"[{name}] submitting {len(recs)} requests")
        began = time.perf_counter()
        ids = []
        for record in recs:
            response = c.post(f"/v1/models/{mid}/forget",
                              json={"records": [record], "hparams": hparams})
            response.raise_for_status()
            ids.append(response.json()["job_id"])
        submit_s = time.perf_counter() - began
        jobs = [processes.wait_job(c, j, timeout=args.timeout) for j in ids]
        wall_s = time.perf_counter() - began
        ok = [j for j in jobs if j["status"] == "succeeded"]
        first = min(epoch(j["created_at"]) for j in jobs)
        last = max(epoch(j["finished_at"]) for j in jobs if j.get("finished_at"))
        span = max(last - first, 1e-9)
        head = c.get(f"/v1/models/{mid}").json()["active_version"]
        log(f"[{name}] {len(ok)}/{len(jobs)} succeeded in {span:.1f} s; verifying {head}")
        verify = c.post(f"/v1/models/{mid}/versions/{head}/verify", json={"records": recs})
        verify.raise_for_status()
        report = processes.wait_job(c, verify.json()["job_id"], timeout=args.timeout)
        result = report.get("result") or {}
        versions = {j["result"]["version"] for j in ok}
        batches = sorted(
            (next(j["result"]["batch_records"] for j in ok if j["result"]["version"] == v)
             for v in versions), reverse=True,
        )
        timings = [j["result"].get("timings", {}) for j in ok]
        return {
            "arm": name,
            "env": env,
            "requests": len(jobs),
            "succeeded": len(ok),
            "failed": [j["error"] for j in jobs if j["status"] != "succeeded"],
            "submit_s": round(submit_s, 3),
            "span_s": round(span, 3),
            "wall_s": round(wall_s, 3),
            "records_per_min": round(sum(j["result"]["total"] for j in ok) / span * 60, 2),
            "versions": len(versions),
            "batch_records": batches,
            "head": head,
            "head_forgotten": result.get("forgotten"),
            "head_total": result.get("total"),
            "head_efficacy": (result.get("summary") or {}).get("version", {}).get("efficacy"),
            "head_specificity": (result.get("summary") or {}).get("version", {})
            .get("specificity"),
            "median_s": {k: _median(timings, k) for k in
                         ("queue_wait_s", "window_wait_s", "lock_wait_s", "load_s", "compute_s")},
            "model_cache_hits": sum(bool(j["result"].get("model_cache_hit")) for j in ok),
        }


def _median(rows: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return round(statistics.median(values), 3) if values else None


# ------------------------------------------------------------------ output
def table(arms: list[dict[str, Any]]) -> str:
    head = ("| arm | requests ok | span s | records/min | versions | largest batches | "
            "head forgot | head Eff % | head Spe % | med queue wait s | med compute s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for a in arms:
        lines.append(
            f"| {a['arm']} | {a['succeeded']}/{a['requests']} | {a['span_s']:.1f} | "
            f"{a['records_per_min']:.1f} | {a['versions']} | "
            f"{', '.join(map(str, a['batch_records'][:5]))} | "
            f"{a['head_forgotten']}/{a['head_total']} | {a['head_efficacy']} | "
            f"{a['head_specificity']} | {a['median_s']['queue_wait_s']} | "
            f"{a['median_s']['compute_s']} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain"))}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TINY,
                        help="'tiny' (the test GPT-2) or a source, e.g. "
                             "builtin:smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--arms", default="on,off", help="on, off or both (on,off)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per job, seconds")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--out-name", default="coalescing")
    args = parser.parse_args(argv)
    envs = {
        "on": {"ZEROUNLEARN_COALESCE_WINDOW_S": str(args.window),
               "ZEROUNLEARN_COALESCE_MAX_BATCH": str(args.max_batch)},
        "off": {"ZEROUNLEARN_COALESCE_WINDOW_S": "0", "ZEROUNLEARN_COALESCE_MAX_BATCH": "1"},
    }
    arms = [run_arm(name, envs[name], args) for name in args.arms.split(",")]
    by = {a["arm"]: a for a in arms}
    speedup = None
    if "on" in by and "off" in by and by["off"]["records_per_min"]:
        speedup = round(by["on"]["records_per_min"] / by["off"]["records_per_min"], 2)
    doc = {"model": args.model, "requests": args.requests, "window_s": args.window,
           "max_batch": args.max_batch, "arms": arms, "speedup": speedup,
           "machine": machine()}
    md = (f"# Forget throughput, coalescing on vs off\n\n"
          f"Model `{args.model}`, {args.requests} single-record requests without "
          f"base_version, submitted back to back by one client; one worker, 1 torch "
          f"thread. Window {args.window:g} s, max batch {args.max_batch} records.\n\n"
          f"{table(arms)}\n\nSpeed-up (records/min, on / off): {speedup}\n\n"
          f"Machine: {json.dumps(doc['machine'])}\n")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.out_name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out_dir / f"{args.out_name}.md").write_text(md)
    print(md)
    return doc


if __name__ == "__main__":
    main()
