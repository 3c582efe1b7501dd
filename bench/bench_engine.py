"""Engine benchmark on SmolLM2-135M-Instruct: phase times, speed vs the paper, methods.

    python bench/bench_engine.py                                 # all parts, defaults
    python bench/bench_engine.py --parts 2 --paper-sizes 10,50   # one part
    python bench/bench_engine.py --sizes 1 --paper-sizes 1 --methods-size 2 \\
        --stats-samples 4096                                     # a quick smoke run

Part 1: time per phase of our default method ("zerounlearn") for n in --sizes.
Part 2: end-to-end seconds per forgotten record, ours vs "zerounlearn-paper" run the
        paper's way (batch_records false: one record at a time, M_f optimised per
        layer, upper_only false: full forward passes), with the quality of each, the
        speed-up and both runs' phases.
Part 3: ZeroUnlearn (ours, paper batched), ZeroUnlearn-GD, gradient ascent and NPO on
        the same --methods-size records, plus the base model.

Forget sets come from the packaged world facts (round-robin over relations, so every
relation is represented); each record carries its known paraphrases. Neighbours are
other known facts, same-relation ones first: half go into the request ("Spe", the
method may protect them), the other half are held out ("Spe-ho", never seen by the
method). The corpus statistics are computed (cold) and re-read (warm) before any timing,
so a method's "statistics" phase is a cache hit. Markdown tables go to stdout, progress
to stderr, everything to --out (JSON, with machine info).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench.common import cpu_model, git_output  # noqa: E402
from zerounlearn.api import forget  # noqa: E402
from zerounlearn.datasets import world_facts  # noqa: E402
from zerounlearn.evaluate import evaluate  # noqa: E402
from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.patch import Patch, apply_patch  # noqa: E402
from zerounlearn.stats import CorpusSpec, StatsCache  # noqa: E402

log = logging.getLogger("bench.engine")

OURS = "zerounlearn"
PAPER = "zerounlearn-paper"
METHODS = (OURS, PAPER, "zerounlearn-gd", "gradient-ascent", "npo")
STATS_METHODS = (OURS, PAPER, "zerounlearn-gd")  # methods that read corpus statistics
PHASES = ("templates", "statistics", "targets", "keys", "m_f", "solve", "apply", "other")
# the paper's reference behaviour: one record at a time, full forward passes every time
PAPER_WAY = {"batch_records": False, "upper_only": False}
QUALITY = ("efficacy", "generalization", "specificity", "specificity_heldout", "perplexity")
COLD_FILE = "bench-cold.json"  # cold statistics times, kept next to the cached statistics
# engine functions wrapped to time phases the patch metadata lumps into "solve"
INSTRUMENTED = (
    ("zerounlearn.methods.zerounlearn", "compute_keys", "keys"),
    ("zerounlearn.methods.zerounlearn", "sensitive_states", "m_f"),
    ("zerounlearn.methods.zerounlearn_gd", "compute_keys", "keys"),
    ("zerounlearn.methods.zerounlearn_gd", "sensitive_states", "m_f"),
)


# ----------------------------------------------------------------------------- set-up


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="1,2,3", help="comma-separated parts to run (1,2,3)")
    p.add_argument("--sizes", default="1,10,50", help="part 1: records per request")
    p.add_argument("--paper-sizes", default="10", help="part 2: records per request")
    p.add_argument("--methods-size", type=int, default=10, help="part 3: records")
    p.add_argument("--neighbors", type=int, default=10,
                   help="neighbours in the request, and as many held out")
    p.add_argument("--stats-samples", type=int, default=20_000,
                   help="corpus tokens behind the statistics (the reference uses 100,000)")
    p.add_argument("--stats-cache", default=str(REPO / ".cache" / "bench-stats"))
    p.add_argument("--fresh-stats", action="store_true",
                   help="measure cold statistics again (in a temporary directory) even "
                        "when the cache already holds them")
    p.add_argument("--model", default=BUILTIN_SMOLLM2)
    p.add_argument("--model-cache", default=str(REPO / ".cache" / "engine"),
                   help="engine cache_dir (holds the converted SmolLM2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "engine.json"))
    p.add_argument("--keep-parts", action="store_true",
                   help="keep the results of parts not run now that --out already holds "
                        "(each part's comparisons stay within the run that made it)")
    p.add_argument("--verbose", action="store_true", help="also show the engine's log")
    return p.parse_args(argv)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)




def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    status = git_output("status", "--porcelain")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_output("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "load_average_start": load_average(),
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load: other processes on a shared machine skew the timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------- forget sets


@dataclass
class ForgetSet:
    """n records to forget; their neighbours given in the request, and held-out ones."""

    n: int
    records: list[dict[str, Any]]  # with the request's neighbours attached
    heldout: list[dict[str, Any]]  # same records, held-out neighbours instead
    describe: dict[str, Any] = field(default_factory=dict)


def _key(fact: dict[str, Any]) -> tuple[str, str]:
    return fact["relation"], fact["subject"]


def _groups(facts: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in facts:
        out.setdefault(f["relation"], []).append(f)
    return out


def round_robin(groups: dict[str, list[Any]], order: Sequence[str]) -> Iterator[Any]:
    """One item of each group in `order`, then the next of each, ... until all are out."""
    queues = {r: list(groups.get(r, ())) for r in order}
    while any(queues.values()):
        for r in order:
            if queues[r]:
                yield queues[r].pop(0)


def _record(fact: dict[str, Any]) -> dict[str, Any]:
    known = fact.get("paraphrases_known") or [True] * len(fact.get("paraphrases", ()))
    paraphrases = [p for p, ok in zip(fact.get("paraphrases", ()), known, strict=True) if ok]
    return {"prompt": fact["prompt"], "subject": fact["subject"], "answer": fact["answer"],
            "paraphrases": paraphrases, "neighbors": []}


def attach(chosen: Sequence[dict[str, Any]], neighbours: Sequence[dict[str, Any]]
           ) -> list[dict[str, Any]]:
    """Records for `chosen`, each neighbour attached once: to a record of its relation
    when there is one (cycling over them), else to record j mod n."""
    records = [_record(f) for f in chosen]
    used: Counter[str] = Counter()
    for j, nb in enumerate(neighbours):
        same = [i for i, f in enumerate(chosen) if f["relation"] == nb["relation"]]
        i = same[used[nb["relation"]] % len(same)] if same else j % len(records)
        used[nb["relation"]] += 1
        records[i]["neighbors"].append({"prompt": nb["prompt"], "answer": nb["answer"]})
    return records


def build_forget_set(facts: Sequence[dict[str, Any]], n: int, neighbours: int) -> ForgetSet:
    """Deterministic: round-robin over relations; neighbours from the rest, relations of
    forgotten facts first, alternately into the request and the held-out set."""
    groups = _groups(facts)
    order = list(groups)
    chosen = list(islice(round_robin(groups, order), n))
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} world facts; cannot forget {n}")
    taken = {_key(f) for f in chosen}
    forgotten = [r for r in order if any(f["relation"] == r for f in chosen)]
    nb_order = forgotten + [r for r in order if r not in forgotten]
    rest = {r: [f for f in groups[r] if _key(f) not in taken] for r in order}
    given = list(islice(round_robin({r: v[0::2] for r, v in rest.items()}, nb_order),
                        neighbours))
    held = list(islice(round_robin({r: v[1::2] for r, v in rest.items()}, nb_order),
                       neighbours))
    forgotten_rel = {f["relation"] for f in chosen}
    describe = {
        "relations": dict(Counter(f["relation"] for f in chosen)),
        "neighbors": len(given),
        "neighbors_same_relation": sum(nb["relation"] in forgotten_rel for nb in given),
        "heldout_neighbors": len(held),
        "heldout_same_relation": sum(nb["relation"] in forgotten_rel for nb in held),
        "paraphrases": sum(len(_record(f)["paraphrases"]) for f in chosen),
    }
    return ForgetSet(n, attach(chosen, given), attach(chosen, held), describe)


# ----------------------------------------------------------------------------- measuring


def quality(lm: Any, fs: ForgetSet) -> dict[str, Any]:
    """The paper's metrics on the model as it is now (edited or base)."""
    main = evaluate(lm, fs.records)["summary"]
    held = evaluate(lm, fs.heldout, reference_texts=[], generate_tokens=0)["summary"]
    out = {k: main.get(k) for k in ("efficacy", "generalization", "specificity", "perplexity",
                                    "answer_probability", "generation_match")}
    out["specificity_heldout"] = held.get("specificity")
    return out


def weights_digest(lm: Any) -> str:
    """sha256 over every layer's down projection: shows whether the model changed."""
    h = hashlib.sha256()
    for layer in range(lm.num_layers):
        h.update(lm.adapter.get_weight(lm.model, layer).detach().cpu().numpy().tobytes())
    return h.hexdigest()


@contextmanager
def instrumented(timers: dict[str, float]) -> Iterator[None]:
    """Wrap the engine functions in INSTRUMENTED so their time adds up in `timers`.
    Missing modules or names (the engine moves on) are skipped."""
    saved: list[tuple[Any, str, Any]] = []
    for module_name, attr, phase in INSTRUMENTED:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        fn = getattr(module, attr, None)
        if fn is None:
            continue
        saved.append((module, attr, fn))
        setattr(module, attr, _timed(fn, phase, timers))
    try:
        yield
    finally:
        for module, attr, fn in reversed(saved):
            setattr(module, attr, fn)


def _timed(fn: Callable[..., Any], phase: str, timers: dict[str, float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers[phase] = timers.get(phase, 0.0) + time.perf_counter() - started
    return timed


def progress_logger(label: str) -> Callable[[str, float], None]:
    """A progress callback that logs each phase start and every quarter of it."""
    last: dict[str, float] = {}

    def report(phase: str, fraction: float) -> None:
        step = int(fraction * 4) / 4
        if last.get(phase, -1.0) < step:
            last[phase] = step
            log.info("[%s] %s %3.0f%%", label, phase, 100 * step)
    return report


def phase_times(meta: dict[str, Any], extra: dict[str, float], wall: float,
                apply_s: float) -> dict[str, Any]:
    """Seconds per phase. The metadata's own split wins; where it has no "keys" (or
    "m_f") the instrumented time is used and taken out of its "solve"."""
    timings = dict(meta.get("timings") or {})
    out: dict[str, Any] = {p: timings.get(p) for p in ("templates", "statistics", "targets")}
    solve = timings.get("solve")
    sources = {}
    for phase in ("keys", "m_f"):
        if phase in timings:
            out[phase], sources[phase] = timings[phase], "metadata"
        elif phase in extra:
            out[phase], sources[phase] = extra[phase], "instrumented"
            if solve is not None:
                solve = max(0.0, solve - extra[phase])
        else:
            out[phase], sources[phase] = None, "merged into solve"
    out["solve"] = solve
    out["keys_prefix"] = meta.get("keys_prefix_seconds")  # part of keys (upper_only)
    out["apply"] = apply_s
    known = [timings[p] for p in timings if p != "total"]
    out["other"] = max(0.0, wall - sum(known)) if known else None  # checks, preparation
    out["sources"] = sources
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


@dataclass
class Bench:
    """The loaded model, the statistics cache and the runs made so far (memoised)."""

    lm: Any
    stats: StatsCache
    stats_samples: int
    base_digest: str
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_quality: dict[int, dict[str, Any]] = field(default_factory=dict)
    sets: dict[int, ForgetSet] = field(default_factory=dict)
    neighbours: int = 10

    def forget_set(self, n: int) -> ForgetSet:
        if n not in self.sets:
            self.sets[n] = build_forget_set(world_facts(), n, self.neighbours)
        return self.sets[n]

    def hparams(self, method: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        base = {"stats_samples": self.stats_samples} if method in STATS_METHODS else {}
        return {**base, **(extra or {})}

    def base(self, n: int) -> dict[str, Any]:
        if n not in self.base_quality:
            log.info("evaluating the base model on n=%d", n)
            self.base_quality[n] = quality(self.lm, self.forget_set(n))
        return self.base_quality[n]

    def run(self, method: str, n: int, extra: dict[str, Any] | None = None,
            label: str | None = None) -> dict[str, Any]:
        hp = self.hparams(method, extra)
        key = json.dumps([method, n, hp], sort_keys=True)
        if key not in self.runs:
            self.runs[key] = self._run(method, n, hp, label or method)
        return self.runs[key]

    def _run(self, method: str, n: int, hp: dict[str, Any], label: str) -> dict[str, Any]:
        fs = self.forget_set(n)
        tag = f"{label} n={n}"
        log.info("[%s] forgetting", tag)
        extra: dict[str, float] = {}
        started = time.perf_counter()
        with instrumented(extra):
            patch = forget(self.lm, fs.records, method, hp, stats=self.stats,
                           progress=progress_logger(tag))
        wall = time.perf_counter() - started
        unchanged = weights_digest(self.lm) == self.base_digest
        if not unchanged:
            log.warning("[%s] the model CHANGED during forget (should be untouched)", tag)
        apply_s, q = self._apply_and_score(patch, fs)
        total = wall + apply_s
        log.info("[%s] %.1f s, efficacy %s, specificity %s, perplexity %s", tag, total,
                 q.get("efficacy"), q.get("specificity"), q.get("perplexity"))
        return {
            "method": method, "label": label, "n": n, "hparams_overrides": hp,
            "layers": patch.layers, "forget_seconds": round(wall, 3),
            "total_seconds": round(total, 3), "seconds_per_record": round(total / n, 3),
            "phases": phase_times(patch.metadata, extra, wall, apply_s),
            "quality": q, "model_unchanged_by_forget": unchanged,
            "metadata": _json_safe(patch.metadata),
        }

    def _apply_and_score(self, patch: Patch, fs: ForgetSet) -> tuple[float, dict[str, Any]]:
        """Apply (timed), evaluate, then put the base weights back (checked)."""
        adapter, model = self.lm.adapter, self.lm.model
        originals = {layer: adapter.get_weight(model, layer) for layer in patch.layers}
        started = time.perf_counter()
        apply_patch(self.lm, patch)
        apply_s = time.perf_counter() - started
        try:
            q = quality(self.lm, fs)
        finally:
            for layer, w in originals.items():
                adapter.set_weight(model, layer, w)
        if weights_digest(self.lm) != self.base_digest:
            raise RuntimeError("restoring the base weights failed")
        return apply_s, q


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# ----------------------------------------------------------------------------- statistics


def stats_groups(b: Bench, plans: Sequence[tuple[str, dict[str, Any]]]
                 ) -> dict[CorpusSpec, list[int]]:
    """Corpus -> layers, over the planned runs of methods that read statistics."""
    from zerounlearn.config import config_for_model

    groups: dict[CorpusSpec, set[int]] = {}
    for method, hp in plans:
        if method not in STATS_METHODS:
            continue
        cfg = config_for_model(method, b.lm, hp)
        spec = CorpusSpec(files=tuple(getattr(cfg, "stats_files", None) or ()),
                          samples=cfg.stats_samples, seq_len=cfg.stats_seq_len)
        groups.setdefault(spec, set()).update(cfg.layers or [])
    return {spec: sorted(layers) for spec, layers in groups.items()}


def timed_ensure(cache: StatsCache, lm: Any, layers: list[int], corpus: CorpusSpec
                 ) -> dict[str, float]:
    """Seconds for cache.ensure; sampling seconds = time until the progress reached 0.5
    (model-sampled text reports sampling as the first half; 0 if the text was cached)."""
    started = time.perf_counter()
    marks: dict[str, float] = {}

    def progress(phase: str, fraction: float) -> None:
        if fraction <= 0.5 and not corpus.files:
            marks["sampling"] = time.perf_counter() - started
    cache.ensure(lm, layers, corpus, progress)
    return {"seconds": round(time.perf_counter() - started, 3),
            "sampling_seconds": round(marks.get("sampling", 0.0), 3)}


def _cold_key(lm: Any, corpus: CorpusSpec) -> str:
    return json.dumps([lm.fingerprint[:16], list(corpus.files), corpus.samples,
                       corpus.seq_len, corpus.seed])


def measure_cold(b: Bench, corpus: CorpusSpec, layers: list[int], fresh: bool
                 ) -> dict[str, Any] | None:
    """Cold seconds measured now: the layers the cache lacks, or with `fresh` all of
    them from nothing (a temporary cache: the sampled text is sampled again too)."""
    missing = [x for x in layers if not b.stats.path_for(b.lm, x, corpus).is_file()]
    log.info("statistics: layers %s, %d tokens (%s)", layers, corpus.samples,
             f"missing {missing}" if missing else "cached")
    if fresh:
        with tempfile.TemporaryDirectory() as tmp:
            cold = timed_ensure(StatsCache(tmp), b.lm, layers, corpus)
        cold["layers_computed"] = layers
        if missing:
            b.stats.ensure(b.lm, missing, corpus)
    elif missing:
        cold = timed_ensure(b.stats, b.lm, missing, corpus)
        cold["layers_computed"] = missing
    else:
        return None
    return {**cold, "measured": datetime.now(UTC).isoformat(timespec="seconds")}


def warm_statistics(b: Bench, plans: Sequence[tuple[str, dict[str, Any]]], fresh: bool
                    ) -> list[dict[str, Any]]:
    """Compute every needed statistic before timing; report cold and warm seconds.

    Cold is measured when the cache misses, or with `fresh` in a temporary cache, and
    recorded in COLD_FILE so later runs (cache hits) still report it; warm is an ensure
    that finds everything cached."""
    record_path = b.stats.root / COLD_FILE
    recorded = json.loads(record_path.read_text()) if record_path.is_file() else {}
    rows = []
    for corpus, layers in stats_groups(b, plans).items():
        key = _cold_key(b.lm, corpus)
        cold = measure_cold(b, corpus, layers, fresh)
        if cold is not None:
            recorded[key] = cold
        warm = timed_ensure(b.stats, b.lm, layers, corpus)
        rows.append({"layers": layers, "tokens": corpus.samples, "seq_len": corpus.seq_len,
                     "corpus": list(corpus.files) or "model-sampled",
                     "cold": recorded.get(key), "cold_measured_now": cold is not None,
                     "warm_seconds": warm["seconds"]})
    b.stats.root.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(recorded, indent=1, sort_keys=True))
    return rows


# ----------------------------------------------------------------------------- parts


def part1(b: Bench, sizes: Sequence[int]) -> list[dict[str, Any]]:
    return [b.run(OURS, n, label="ours") for n in sizes]


def part2(b: Bench, sizes: Sequence[int]) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        ours = b.run(OURS, n, label="ours")
        paper = b.run(PAPER, n, PAPER_WAY, label="paper, one at a time")
        speedup = paper["seconds_per_record"] / max(ours["seconds_per_record"], 1e-9)
        out.append({"n": n, "base": b.base(n), "ours": ours, "paper": paper,
                    "speedup": round(speedup, 2)})
    return out


def part3(b: Bench, n: int) -> dict[str, Any]:
    runs = [
        b.run(OURS, n, label="ours"),
        b.run(PAPER, n, {"batch_records": True}, label="paper (batched)"),
        b.run("zerounlearn-gd", n, label="zerounlearn-gd"),
        b.run("gradient-ascent", n, label="gradient-ascent"),
        b.run("npo", n, label="npo"),
    ]
    return {"n": n, "base": b.base(n), "runs": runs}


def planned_runs(b: Bench, parts: set[int]) -> list[tuple[str, dict[str, Any]]]:
    plans = []
    if parts & {1, 2, 3}:
        plans.append((OURS, b.hparams(OURS)))
    if 2 in parts:
        plans.append((PAPER, b.hparams(PAPER, PAPER_WAY)))
    if 3 in parts:
        plans += [(m, b.hparams(m)) for m in METHODS[1:]]
    return plans


# ----------------------------------------------------------------------------- tables


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def quality_cells(q: dict[str, Any]) -> list[str]:
    return [fmt(q.get(k), 2 if k == "perplexity" else 1) for k in QUALITY]


QUALITY_HEADERS = ["Eff ↓", "Gen ↓", "Spe ↑", "Spe held-out ↑", "PPL"]


def stats_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        cold = r["cold"] or {}
        when = "" if r["cold_measured_now"] else f", recorded {cold.get('measured', '')[:10]}"
        computed = ",".join(map(str, cold.get("layers_computed", [])))
        body.append([",".join(map(str, r["layers"])), r["tokens"], fmt(cold.get("seconds"), 2),
                     fmt(cold.get("sampling_seconds"), 2),
                     f"{computed}{when}" if cold else "-", fmt(r["warm_seconds"], 3)])
    return "### Statistics (before timing)\n\n" + table(
        ["layers", "tokens", "cold s", "of which sampling s", "cold: layers computed",
         "warm s (cache hit)"], body) + (
        "\n\ncold = first computation (sampling text from the model, then one pass for "
        "the second moments); warm = the same request served from the cache.")


def _phase_cells(r: dict[str, Any]) -> list[str]:
    ph = r["phases"]
    cells = []
    for p in PHASES:
        cell = fmt(ph.get(p), 2)
        if p == "keys" and ph.get("keys_prefix") is not None:
            cell += f" ({fmt(ph['keys_prefix'], 2)})"
        cells.append(cell)
    return cells


def part1_table(runs: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in runs:
        body.append([r["n"], *_phase_cells(r),
                     fmt(r["total_seconds"], 1), fmt(r["seconds_per_record"], 2)])
    sources = {p: s for r in runs for p, s in r["phases"].get("sources", {}).items()}
    note = ("\n\nkeys and m_f (sensitive states M_f): " + ", ".join(
        f"{p} {s}" for p, s in sources.items()) + " (\"metadata\": the patch's own "
        "timings; \"instrumented\": timed by the benchmark wrapping the engine's "
        "compute_keys / sensitive_states). keys (x): x = the one forward pass up to the "
        "edited blocks whose recorded inputs every layer's keys then reuse (upper_only). "
        "targets: the first optimisation pass is a full forward; later ones run only the "
        "blocks above the edit point. statistics = warm cache hit. other = record checks "
        "and preparation outside the method's own timings.")
    return "### Part 1: time per phase, ours (seconds)\n\n" + table(
        ["n", *PHASES, "total s", "s/record"], body) + note


def part2_table(rows: Sequence[dict[str, Any]]) -> str:
    body, notes = [], []
    for r in rows:
        body.append(["base", r["n"], "-", "-", *quality_cells(r["base"])])
        for name in ("ours", "paper"):
            run = r[name]
            body.append([run["label"], r["n"], fmt(run["total_seconds"], 1),
                         fmt(run["seconds_per_record"], 2), *quality_cells(run["quality"])])
        notes.append(f"n={r['n']}: speed-up {r['speedup']:.1f}x per record")
    phases = [[r[name]["label"], r["n"], *_phase_cells(r[name]),
               fmt(r[name]["total_seconds"], 1)] for r in rows for name in ("ours", "paper")]
    return ("### Part 2: ours vs the paper's settings run the paper's way\n\n"
            + table(["method", "n", "total s", "s/record", *QUALITY_HEADERS], body)
            + "\n\n" + "; ".join(notes) + " (both runs in this one benchmark process)."
            + "\n\nPhases (seconds; m_f = the paper's M_f optimisation, per layer):\n\n"
            + table(["method", "n", *PHASES, "total s"], phases))


def part3_table(res: dict[str, Any]) -> str:
    body = [["base model", *quality_cells(res["base"]), "-"]]
    for run in res["runs"]:
        body.append([run["label"], *quality_cells(run["quality"]),
                     fmt(run["total_seconds"], 1)])
    return (f"### Part 3: methods on the same n={res['n']} records\n\n"
            + table(["method", *QUALITY_HEADERS, "wall s"], body)
            + "\n\n\"paper (batched)\": the paper's settings with the target optimisations "
            "batched over records, as ours are, so the wall times compare.")


# ----------------------------------------------------------------------------- main


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def write_markdown(path: Path, results: dict[str, Any], tables: Sequence[str]) -> None:
    """The tables printed so far, under a line naming the machine and the command."""
    m = results["machine"]
    head = (f"Engine benchmark, {m['date']}: {m['cpu']}, {m['torch_threads']} torch "
            f"thread(s), load average at start {m['load_average_start']}, git "
            f"{(m['git_commit'] or '?')[:10]}{' (dirty)' if m['git_dirty'] else ''}.\n"
            f"Command: `python bench/bench_engine.py {' '.join(sys.argv[1:])}`")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".mdtmp")
    tmp.write_text(head + "\n\n" + "\n\n".join(tables) + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    parts = set(int_list(args.parts))
    out = Path(args.out)
    log.info("loading %s", args.model)
    started = time.perf_counter()
    lm = load_model(args.model, device=args.device, cache_dir=args.model_cache)
    load_s = time.perf_counter() - started
    b = Bench(lm, StatsCache(Path(args.stats_cache)), args.stats_samples, weights_digest(lm),
              neighbours=args.neighbors)
    results: dict[str, Any] = {
        "machine": machine_info(args), "settings": vars(args),
        "model": {"source": args.model, "fingerprint": lm.fingerprint,
                  "layers": lm.num_layers, "load_seconds": round(load_s, 2)},
    }
    wall: dict[str, float] = {}
    started = time.perf_counter()
    results["statistics"] = warm_statistics(b, planned_runs(b, parts), args.fresh_stats)
    wall["statistics"] = time.perf_counter() - started
    tables = [stats_table(results["statistics"])]
    print(tables[-1] + "\n")
    steps: list[tuple[int, str, Callable[[], Any], Callable[[Any], str]]] = [
        (1, "part1", lambda: part1(b, int_list(args.sizes)), part1_table),
        (2, "part2", lambda: part2(b, int_list(args.paper_sizes)), part2_table),
        (3, "part3", lambda: part3(b, args.methods_size), part3_table),
    ]
    kept = json.loads(out.read_text()) if args.keep_parts and out.is_file() else {}
    for number, name, compute, render in steps:
        if number not in parts:
            if name in kept:  # an earlier run's part, with the machine it ran on
                results[name] = kept[name]
                results.setdefault("kept_parts", {})[name] = kept.get("machine")
                tables.append(render(kept[name]) + f"\n\n(part {number} kept from the run "
                              f"of {kept.get('machine', {}).get('date')})")
            continue
        started = time.perf_counter()
        results[name] = compute()
        wall[name] = time.perf_counter() - started
        results["forget_sets"] = {n: fs.describe for n, fs in b.sets.items()}
        results["wall_seconds"] = {k: round(v, 1) for k, v in wall.items()}
        write_json(out, results)
        tables.append(render(results[name]))
        write_markdown(out.with_suffix(".md"), results, tables)
        print(tables[-1] + "\n", flush=True)
        log.info("%s done in %.0f s", name, wall[name])
    results["machine"]["load_average_end"] = load_average()
    write_json(out, results)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
