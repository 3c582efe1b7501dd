"""Sequential forget requests: does the model stay sane when edits pile up?

`--steps` requests of `--per-step` records each, every one computed on the model as the
previous steps left it (`forget` on the edited model, then `apply_patch` in place, as a
service version chain does). After every step (step 0 = the unedited model) it scores:

- efficacy: % of ALL records forgotten so far whose answer is still reproduced under
  teacher forcing (lower is better; must stay ~0: earlier edits must not come back),
  also split into earlier steps' records and this step's records, and on the planned
  records not forgotten yet ("pending": a specificity figure for facts that are due);
- generalization: the same on the known paraphrases of the records forgotten so far;
- held-out specificity: % of a FIXED set of known facts, never forgotten and never
  given to the method, still reproduced (higher is better);
- request specificity: the same on the neighbours the requests so far carried;
- perplexity on the packaged reference texts, and the seconds per step.

Facts: `world_facts()` + `more_facts()` (known to SmolLM2-135M-Instruct), split
deterministically into held-out facts, a neighbour pool and the forget sequence
(round-robin over relations). `--facts tiny` uses the tiny test GPT-2's facts
(tests/support/tiny_model.py) with its TINY_HPARAMS, for a smoke test.

    python bench/bench_sequential.py                          # 20 x 5 on SmolLM2
    python bench/bench_sequential.py --steps 2 --out-name sequential-smoke
    python bench/bench_sequential.py --facts tiny --model .cache/tiny-gpt2 \\
        --stats-dir .cache/tiny-stats --steps 3 --per-step 2 --out-name sequential-tiny

Writes <out-dir>/<out-name>.json, .md and .png after EVERY step (a partial run leaves
its results). The statistics are computed once on the base model and cached under
--stats-dir (keyed by the base model's fingerprint, which edits do not change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from zerounlearn.api import forget  # noqa: E402
from zerounlearn.datasets import more_facts, reference_texts, world_facts  # noqa: E402
from zerounlearn.evaluate import evaluate, perplexity  # noqa: E402
from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.methods.registry import get_method  # noqa: E402
from zerounlearn.patch import apply_patch  # noqa: E402
from zerounlearn.stats import StatsCache  # noqa: E402

Record = dict[str, Any]


# ----------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """steps[k]: the records of request k+1 (with their neighbours); heldout: facts
    never forgotten nor shown to the method; ids: (relation, subject) per step."""

    steps: list[list[Record]]
    heldout: list[Record]
    ids: list[list[tuple[str, str]]] = field(default_factory=list)
    describe: dict[str, Any] = field(default_factory=dict)
    bank: list[Record] = field(default_factory=list)  # the neighbour pool, as retain facts


def _record(fact: dict[str, Any], with_subject: bool = True) -> Record:
    known = fact.get("paraphrases_known") or [False] * len(fact.get("paraphrases", []))
    rec: Record = {"prompt": fact["prompt"], "answer": fact["answer"],
                   "paraphrases": [p for p, ok in zip(fact.get("paraphrases", []), known,
                                                      strict=True) if ok]}
    if with_subject and fact.get("subject"):
        rec["subject"] = fact["subject"]
    return rec


def _round_robin(groups: dict[str, list[Any]], n: int) -> list[Any]:
    """Up to n items, one per group in turn, each group in order (items are removed)."""
    out: list[Any] = []
    while len(out) < n and any(groups.values()):
        for items in groups.values():
            if items and len(out) < n:
                out.append(items.pop(0))
    return out


def make_plan(facts: Sequence[dict[str, Any]], steps: int, per_step: int, heldout: int,
              pool: int, neighbors: int, with_subject: bool = True) -> Plan:
    """Deterministic split of `facts`: held-out and neighbour pool from the END of every
    relation (round-robin), the forget sequence from the start (round-robin, so each
    request mixes relations); each record gets `neighbors` pool facts, its own
    relation's first (cycling), never one with its own answer, so a request names facts
    it must keep."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in facts:
        groups.setdefault(f["relation"], []).append(f)
    tails = {r: list(reversed(v)) for r, v in groups.items()}
    held = _round_robin(tails, heldout)
    nb_pool = _round_robin(tails, pool)
    taken = {id(f) for f in held + nb_pool}
    rest = {r: [f for f in v if id(f) not in taken] for r, v in groups.items()}
    sequence = _round_robin(rest, steps * per_step)
    if len(sequence) < steps * per_step:
        raise SystemExit(f"{len(facts)} facts leave {len(sequence)} to forget after "
                         f"{heldout} held out and {pool} neighbours; "
                         f"{steps} x {per_step} = {steps * per_step} needed")
    records: list[Record] = []
    same_at: dict[str, int] = {}  # per relation: where its next same-relation pick starts
    any_at = 0
    for f in sequence:
        rec = _record(f, with_subject)
        # a neighbour with the forgotten answer would contradict the request: skipped
        usable = [n for n in nb_pool if n["answer"] != f["answer"]]
        same = [n for n in usable if n["relation"] == f["relation"]]
        chosen: list[dict[str, Any]] = []
        if neighbors and same:
            at = same_at.get(f["relation"], 0)
            chosen.append(same[at % len(same)])
            same_at[f["relation"]] = at + 1
        while len(chosen) < min(neighbors, len(usable)):
            cand = usable[any_at % len(usable)]
            any_at += 1
            if cand not in chosen:
                chosen.append(cand)
        rec["neighbors"] = [{"prompt": n["prompt"], "answer": n["answer"]} for n in chosen]
        records.append(rec)
    split = [records[k * per_step:(k + 1) * per_step] for k in range(steps)]
    ids = [[(f["relation"], f.get("subject", "")) for f in
            sequence[k * per_step:(k + 1) * per_step]] for k in range(steps)]
    rel_count: dict[str, int] = {}
    for f in sequence:
        rel_count[f["relation"]] = rel_count.get(f["relation"], 0) + 1
    held_rel: dict[str, int] = {}
    for f in held:
        held_rel[f["relation"]] = held_rel.get(f["relation"], 0) + 1
    describe = {"facts": len(facts), "forgotten": len(sequence), "heldout": len(held),
                "neighbor_pool": len(nb_pool), "neighbors_per_record": neighbors,
                "paraphrases": sum(len(r["paraphrases"]) for r in records),
                "forgotten_per_relation": rel_count, "heldout_per_relation": held_rel}
    bank = [{k: v for k, v in _record(f, with_subject).items() if k != "paraphrases"}
            for f in nb_pool]
    return Plan(split, [_record(f, with_subject) | {"neighbors": []} for f in held], ids,
                describe, bank)


def world_plan(args: argparse.Namespace) -> Plan:
    facts = world_facts() + more_facts()
    if args.skip_subject_first:  # see --skip-subject-first
        facts = [f for f in facts if not f["prompt"].startswith(f["subject"])]
    return make_plan(facts, args.steps, args.per_step, args.heldout, args.pool, args.neighbors)


def tiny_plan(args: argparse.Namespace) -> Plan:
    """The tiny GPT-2's facts, without subjects (it looks facts up at the last token)."""
    from tests.support.tiny_model import tiny_facts

    return make_plan(tiny_facts(), args.steps, args.per_step, args.heldout, args.pool,
                     args.neighbors, with_subject=False)


# ----------------------------------------------------------------------------- measuring


def _pct(flags: Sequence[bool]) -> float | None:
    return 100.0 * sum(flags) / len(flags) if flags else None


def measure(lm: Any, plan: Plan, done: int, per_step: int, texts: Sequence[str]) -> dict:
    """Scores after `done` steps: the records forgotten so far with their paraphrases and
    neighbours, the pending ones (prompts only), the held-out facts, the perplexity."""
    planned = [r for step in plan.steps for r in step]
    n_done = done * per_step
    forgotten = (evaluate(lm, planned[:n_done], [], generate_tokens=0)["records"]
                 if n_done else [])
    bare = [{k: v for k, v in r.items() if k not in ("paraphrases", "neighbors")}
            for r in planned[n_done:]]
    pending = evaluate(lm, bare, [], generate_tokens=0)["records"] if bare else []
    earlier, current = forgotten[:max(0, n_done - per_step)], forgotten[max(0, n_done - per_step):]
    held = evaluate(lm, plan.heldout, [], generate_tokens=0)["summary"]
    ppl = perplexity(lm, texts) if texts else None

    def repro(rows: list[dict]) -> list[bool]:
        return [r["reproduced"] for r in rows]

    probs = [r["answer_probability"] for r in forgotten if r["answer_probability"] is not None]
    return {
        "step": done,
        "records_forgotten": n_done,
        "efficacy": _pct(repro(forgotten)),
        "efficacy_earlier": _pct(repro(earlier)) if done > 1 else None,
        "efficacy_this_step": _pct(repro(current)) if done > 0 else None,
        "efficacy_pending": _pct(repro(pending)),
        "earlier_reproduced": sum(repro(earlier)) if done > 1 else None,
        "generalization": _pct([ok for r in forgotten for ok in r["paraphrases_reproduced"]]),
        "specificity_heldout": held["efficacy"],
        "specificity_request": _pct([ok for r in forgotten
                                     for ok in r["neighbors_reproduced"]]),
        "perplexity": ppl,
        "answer_probability": sum(probs) / len(probs) if probs else None,
        "forgotten_reproduced_indices": [i for i, r in enumerate(forgotten) if r["reproduced"]],
        # plan indices of known facts due later that are already lost (collateral damage)
        "pending_lost_indices": [n_done + i for i, r in enumerate(pending)
                                 if not r["reproduced"]],
    }


# ----------------------------------------------------------------------------- output


COLUMNS = [  # (key, header, format)
    ("step", "step", "{}"), ("records_forgotten", "forgotten", "{}"),
    ("efficacy", "Eff (all so far)", "{:.1f}"), ("efficacy_earlier", "Eff earlier", "{:.1f}"),
    ("efficacy_this_step", "Eff this step", "{:.1f}"),
    ("efficacy_pending", "Eff pending", "{:.1f}"), ("generalization", "Gen", "{:.1f}"),
    ("specificity_heldout", "Spe held-out", "{:.1f}"),
    ("specificity_request", "Spe request", "{:.1f}"), ("perplexity", "PPL", "{:.2f}"),
    ("forget_seconds", "forget s", "{:.0f}"), ("eval_seconds", "eval s", "{:.0f}"),
]


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def markdown(doc: dict) -> str:
    head = [h for _, h, _ in COLUMNS]
    lines = [f"# Sequential forget requests ({doc['model']}, {doc['method']})", "",
             f"{doc['steps_planned']} requests x {doc['per_step']} records, each on the "
             f"model the previous ones left; plan: {json.dumps(doc['plan'])}.", "",
             *([] if doc.get("finished") else
               [f"**Partial**: {len(doc['rows']) - 1} of {doc['steps_planned']} steps "
                "(the run was stopped or is still running).", ""]),
             f"hparams overrides: `{json.dumps(doc['hparams'])}`; machine: "
             f"{doc['machine']['cpu_count']} CPUs, torch {doc['machine']['torch']}, "
             f"{doc['threads']} thread(s); started {doc['started']}.", "",
             "Eff: % of forgotten records still reproduced (lower is better); Spe: % of "
             "kept facts still reproduced (higher is better); PPL on the reference texts.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in doc["rows"]:
        lines.append("| " + " | ".join(_cell(row, k, f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    x = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    series = [("efficacy", "efficacy, all forgotten so far (lower is better)", "C3", "o"),
              ("generalization", "generalisation, their paraphrases", "C1", "."),
              ("efficacy_pending", "known facts due later (pending)", "C7", "x"),
              ("specificity_heldout", "specificity, held-out facts", "C0", "s"),
              ("specificity_request", "specificity, request neighbours", "C9", ".")]
    for key, label, color, marker in series:
        pts = [(xi, r[key]) for xi, r in zip(x, rows, strict=True) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label, color=color, marker=marker)
    ax.set_xlabel(f"step (request of {doc['per_step']} records; records forgotten = "
                  f"{doc['per_step']} x step)")
    ax.set_ylabel("% reproduced under teacher forcing")
    ax.set_ylim(-3, 103)
    ax2 = ax.twinx()
    pts = [(xi, r["perplexity"]) for xi, r in zip(x, rows, strict=True)
           if r.get("perplexity") is not None]
    if pts:
        ax2.plot(*zip(*pts, strict=True), label="perplexity (right axis)", color="C2",
                 linestyle="--", marker="^")
    ax2.set_ylabel("perplexity, reference texts")
    if pts:
        lo, hi = min(p for _, p in pts), max(p for _, p in pts)
        if hi > 10 * lo:  # a blow-up: a linear axis would flatten everything before it
            ax2.set_yscale("log")
        else:
            ax2.set_ylim(lo * 0.9, max(hi * 1.1, lo * 1.3))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", ncol=3,
              bbox_to_anchor=(0.5, -0.16))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"Sequential forget requests: {doc['model_name']}, {doc['method']}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write(doc: dict, out_dir: Path, name: str, with_plot: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(doc, indent=1)), (".md", markdown(doc))):
        tmp = out_dir / f"{name}{suffix}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_dir / f"{name}{suffix}")
    if with_plot:
        plot(doc, out_dir / f"{name}.png")


def machine(threads: int) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = None
    return {"platform": platform.platform(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": threads, "git_commit": commit}


# ----------------------------------------------------------------------------- the run


def run(lm: Any, plan: Plan, method: str, hparams: dict[str, Any], stats: StatsCache,
        texts: Sequence[str], doc: dict, out_dir: Path, name: str,
        with_plot: bool = True) -> dict:
    """Step 0 (unedited), then each request on the edited model; writes after each."""
    impl = get_method(method)  # one instance: its context templates are sampled once
    per_step = doc["per_step"]
    t0 = time.perf_counter()
    row = measure(lm, plan, 0, per_step, texts)
    row |= {"forget_seconds": None, "eval_seconds": time.perf_counter() - t0,
            "load_average": os.getloadavg()[0]}
    doc["rows"].append(row)
    write(doc, out_dir, name, with_plot)
    _log(row)
    for k, records in enumerate(plan.steps, start=1):
        t0 = time.perf_counter()
        patch = forget(lm, records, impl, hparams, stats=stats,
                       retain=plan.bank if doc.get("bank") else None)
        forget_s = time.perf_counter() - t0
        edits = weight_change(lm, patch)  # before apply: forget() left the model as it was
        apply_patch(lm, patch)  # in place: the next request builds on this version
        t1 = time.perf_counter()
        row = measure(lm, plan, k, per_step, texts)
        row |= {"forget_seconds": forget_s, "eval_seconds": time.perf_counter() - t1,
                "load_average": os.getloadavg()[0], "layers": patch.layers,
                "timings": patch.metadata.get("timings"), "weights": edits,
                "target_nll": patch.metadata.get("target_nll"),
                "target_steps": patch.metadata.get("target_steps"),
                "rounds": patch.metadata.get("rounds")}
        doc["rows"].append(row)
        doc["finished"] = k == len(plan.steps)
        write(doc, out_dir, name, with_plot)
        _log(row)
    return doc


def weight_change(lm: Any, patch: Any) -> dict[str, dict[str, float]]:
    """Per edited layer: Frobenius norms of the weight before, of the change, and their
    ratio (edits piling up show as a growing norm)."""
    out = {}
    for layer in patch.layers:
        before = lm.adapter.get_weight(lm.model, layer).detach().double()
        delta = patch.weights[layer].detach().double() - before
        norm, change = float(before.norm()), float(delta.norm())
        out[str(layer)] = {"norm_before": norm, "change": change,
                           "relative_change": change / norm if norm else float("inf")}
    return out


def _log(row: dict) -> None:
    cells = "  ".join(f"{h}={_cell(row, k, f)}" for k, h, f in COLUMNS)
    if row.get("weights"):
        cells += "  dW/W=" + ",".join(f"{w['relative_change']:.3f}"
                                      for w in row["weights"].values())
    print(cells, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--per-step", type=int, default=5)
    p.add_argument("--method", default="zerounlearn")
    p.add_argument("--stats-samples", type=int, default=None,
                   help="statistics tokens (default 20000; --facts tiny: TINY_HPARAMS')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=BUILTIN_SMOLLM2)
    p.add_argument("--facts", choices=("world", "tiny"), default="world",
                   help="world: world_facts()+more_facts(); tiny: the tiny GPT-2's facts")
    p.add_argument("--heldout", type=int, default=25, help="held-out facts (never forgotten)")
    p.add_argument("--pool", type=int, default=20, help="facts the requests name as neighbours")
    p.add_argument("--neighbors", type=int, default=2, help="neighbours per record")
    p.add_argument("--hparams", default="{}", help="JSON overrides of the method's hparams")
    p.add_argument("--bank", action="store_true",
                   help="give the neighbour pool to the engine as the model's retain bank")
    p.add_argument("--skip-subject-first", action="store_true",
                   help="leave out facts whose prompt starts with the subject (the "
                        "'continent' relation): editing at the prompt's first token blew "
                        "the weights up (README, Sequential requests)")
    p.add_argument("--cache", default=os.environ.get("ZEROUNLEARN_TEST_CACHE",
                                                     str(REPO / ".cache")))
    p.add_argument("--stats-dir", default=None, help="StatsCache root (default <cache>/stats)")
    p.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    p.add_argument("--out-name", default="sequential")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hparams: dict[str, Any] = {}
    if args.facts == "tiny":
        from tests.support.tiny_model import TINY_HPARAMS

        hparams |= TINY_HPARAMS
    if args.stats_samples is not None or args.facts == "world":
        hparams["stats_samples"] = args.stats_samples or 20_000
    hparams |= json.loads(args.hparams)
    plan = tiny_plan(args) if args.facts == "tiny" else world_plan(args)
    cache = Path(args.cache)
    lm = load_model(args.model, cache_dir=cache / "engine")
    lm.track_edit_keys()  # so that --hparams '{"history_weight": ...}' can use them
    stats = StatsCache(Path(args.stats_dir) if args.stats_dir else cache / "stats")
    texts = reference_texts()
    doc = {"model": args.model, "model_name": Path(args.model).name if args.facts == "tiny"
           else "SmolLM2-135M-Instruct", "method": args.method, "hparams": hparams,
           "facts": args.facts, "skip_subject_first": args.skip_subject_first,
           "steps_planned": args.steps, "per_step": args.per_step,
           "threads": args.threads, "started": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": machine(args.threads), "plan": plan.describe,
           "forgotten_ids": plan.ids, "finished": False, "rows": [], "bank": args.bank}
    return run(lm, plan, args.method, hparams, stats, texts, doc, Path(args.out_dir),
               args.out_name, with_plot=not args.no_plot)


if __name__ == "__main__":
    main()
