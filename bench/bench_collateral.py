"""Collateral damage of forgetting many facts: the cases of the engine issue's target table.

Facts come from the packaged splits (zerounlearn.datasets.split_facts): defaults are
chosen on `--split tune` and reported on `--split test`, whose facts no default saw. The
built-in retain bank (the "bank" split) is given to the engine as the service gives it,
unless --no-bank. The caller gives no neighbours.

Cases (each starts from the unedited model):
  one:N       N facts of the split in one request
  seq:SxP     S requests of P facts, each on the model the previous one left (the
              version chain a service builds: apply_patch, which also hands on the carry)

Per case, on the final model (with --probes also the four probes): efficacy (% of
forgotten prompts still reproduced under teacher forcing), paraphrases (the same on
their known paraphrases), held-out specificity (% of the split's OTHER facts still
reproduced; all are known to the base model) overall and per relation, unseen
specificity (the same on the split's half of zerounlearn.datasets.unseen_facts: known
facts written after the defaults were chosen, never forgotten), bank specificity,
perplexity on the packaged reference texts against the base, and seconds per record.
A case needs as many facts as it forgets: the test split has 67, so 20 x 5 sequential
requests do not fit it (10 x 5 do). With --with-unseen the case forgets from the split's
facts and its unseen half together (test: 67 + 72 = 139, tune: 74 + 79 = 153; no
default was tuned on either test half), and held-out specificity counts every fact of
both not forgotten (no separate unseen column):

    python bench/bench_collateral.py --split test --with-unseen --case seq:20x5 \\
        --out-name collateral-test-seq20

    python bench/bench_collateral.py --split test --case one:20 --case one:50 \\
        --case seq:10x5 --out-name collateral-test-ours
    python bench/bench_collateral.py --split test --case one:20 --method zerounlearn-paper \\
        --no-bank --out-name collateral-test-paper
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench.chat_context import ChatContextTemplates  # noqa: E402
from bench.common import machine_info, md_table, write_results  # noqa: E402
from zerounlearn.api import forget  # noqa: E402
from zerounlearn.datasets import (  # noqa: E402
    builtin_retain_bank,
    reference_texts,
    split_facts,
    unseen_facts,
)
from zerounlearn.evaluate import perplexity, reproduced  # noqa: E402
from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.methods.registry import get_method  # noqa: E402
from zerounlearn.patch import apply_patch  # noqa: E402
from zerounlearn.probes import probe  # noqa: E402
from zerounlearn.stats import StatsCache  # noqa: E402

Fact = dict[str, Any]


def pick(facts: Sequence[Fact], n: int) -> list[Fact]:
    """n facts round-robin over relations (each relation in its split order)."""
    groups: dict[str, list[Fact]] = {}
    for f in facts:
        groups.setdefault(f["relation"], []).append(f)
    queues = [list(v) for _, v in sorted(groups.items())]
    out: list[Fact] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    if len(out) < n:
        raise SystemExit(f"the split has {len(facts)} facts, {n} needed")
    return out


def as_record(f: Fact) -> dict[str, Any]:
    return {"prompt": f["prompt"], "answer": f["answer"], "subject": f["subject"]}


def paraphrase_pairs(facts: Sequence[Fact]) -> list[dict[str, str]]:
    return [{"prompt": p, "answer": f["answer"]} for f in facts
            for p, known in zip(f["paraphrases"], f["paraphrases_known"], strict=True) if known]


def pct(flags: Sequence[bool]) -> float | None:
    return round(100.0 * sum(flags) / len(flags), 1) if flags else None


def kept(lm: Any, facts: Sequence[Fact]) -> dict[str, Any]:
    """How many of `facts` the model still reproduces: % overall, n, % per relation and
    the prompts lost."""
    flags = reproduced(lm, [as_record(f) for f in facts]) if facts else []
    per_relation: dict[str, list[bool]] = {}
    for f, ok in zip(facts, flags, strict=True):
        per_relation.setdefault(f["relation"], []).append(ok)
    return {"pct": pct(flags), "n": len(facts),
            "per_relation": {r: pct(v) for r, v in sorted(per_relation.items())},
            "lost": [f["prompt"] for f, ok in zip(facts, flags, strict=True) if not ok]}


def case_facts(split: str, with_unseen: bool) -> tuple[list[Fact], list[Fact]]:
    """The facts a case forgets from and holds out, and the unseen facts it scores apart:
    the split's and its unseen half, or (with_unseen) both in one pool, each relation's
    split facts before its unseen ones (pick keeps that order), and none apart."""
    facts, unseen = split_facts(split), unseen_facts(split)
    return (facts + unseen, []) if with_unseen else (facts, unseen)


def parse_case(text: str) -> tuple[str, int, int]:
    """"one:20" -> ("one", 1, 20); "seq:20x5" -> ("seq", 20, 5)."""
    kind, _, size = text.partition(":")
    if kind == "one":
        return kind, 1, int(size)
    if kind == "seq":
        steps, _, per = size.partition("x")
        return kind, int(steps), int(per)
    raise SystemExit(f"unknown case {text!r}: one:N or seq:SxP")


def run_case(lm: Any, base: dict[str, torch.Tensor], case: str, args: argparse.Namespace,
             stats: StatsCache, base_ppl: float, texts: Sequence[str]) -> dict[str, Any]:
    _, steps, per = parse_case(case)
    facts, unseen_part = case_facts(args.split, args.with_unseen)
    forgotten = pick(facts, steps * per)
    chosen = {f["prompt"] for f in forgotten}
    heldout = [f for f in facts if f["prompt"] not in chosen]
    bank = [] if args.no_bank else builtin_retain_bank()
    method = get_method(args.method)  # one instance: its template cache is reused
    if args.chat_context:  # an experiment: the chat template as one more context
        method.templates = ChatContextTemplates()
    hparams = json.loads(args.hparams)
    lm.model.load_state_dict(base)
    lm.carry.clear()
    lm.base_weights.clear()
    seconds, rounds, timings, retain_info = 0.0, [], {}, []
    left: list[int] = []
    chat_after_own: list[int] = []  # per request: its records the chat probe finds at once
    for k in range(steps):
        batch = forgotten[k * per:(k + 1) * per]
        t = time.perf_counter()
        patch = forget(lm, [as_record(f) for f in batch], method, hparams, stats=stats,
                       retain=bank or None)
        seconds += time.perf_counter() - t
        apply_patch(lm, patch)
        rounds.append(patch.metadata.get("rounds"))
        retain_info.append(patch.metadata.get("retain"))
        for phase, value in patch.metadata.get("timings", {}).items():
            timings[phase] = round(timings.get(phase, 0.0) + value, 2)
        nll = patch.metadata.get("target_nll") or []
        target_nll = [round(sum(nll) / len(nll), 3)] if nll else []
        # how many of the records forgotten so far still answer: an in-request miss
        # shows as this request's count, a record that comes back as a later one
        left.append(sum(reproduced(lm, [as_record(f) for f in forgotten[:(k + 1) * per]])))
        if args.probes and steps > 1:  # left by its own rounds, or back after later ones?
            mine = probe(lm, [as_record(f) for f in batch], probes=("chat",))
            chat_after_own.append(sum(r["found"]["chat"] is True for r in mine["records"]))
        print(f"  {case} request {k + 1}/{steps}: {time.perf_counter() - t:.0f} s", flush=True)
    held = kept(lm, heldout)
    unseen = kept(lm, unseen_part)  # never forgotten, never tuned on
    ppl = perplexity(lm, texts)
    row = {
        "case": case, "records": len(forgotten),
        "efficacy": pct(reproduced(lm, [as_record(f) for f in forgotten])),
        "paraphrases": pct(reproduced(lm, paraphrase_pairs(forgotten)) if
                           paraphrase_pairs(forgotten) else []),
        "heldout_specificity": held["pct"], "heldout": held["n"],
        "heldout_per_relation": held["per_relation"], "heldout_lost": held["lost"],
        "unseen_specificity": unseen["pct"], "unseen": unseen["n"],
        "unseen_per_relation": unseen["per_relation"], "unseen_lost": unseen["lost"],
        "bank_specificity": pct(reproduced(lm, bank)) if bank else None,
        "perplexity": round(ppl, 3),
        "perplexity_increase_pct": round(100.0 * (ppl - base_ppl) / base_ppl, 2),
        "seconds_per_record": round(seconds / len(forgotten), 2),
        "rounds": rounds, "reproduced_after_each": left, "timings": timings,
        "retain": retain_info[-1],
        "target_nll_mean_last": target_nll,
    }
    if args.probes:  # % of the forgotten facts each probe brings back (zerounlearn.probes)
        result = probe(lm, [as_record(f) for f in forgotten])
        row["probes_found_pct"] = result["summary"]["found_pct"]
        if steps > 1:  # per request: its records each probe finds after the last request
            records = result["records"]
            row["probes_found_by_request"] = {
                name: [sum(r["found"][name] is True for r in records[k * per:(k + 1) * per])
                       for k in range(steps)] for name in result["summary"]["found_pct"]}
            row["chat_found_after_own_request"] = chat_after_own
    carry = {layer: int(f.shape[1]) for layer, f in lm.carry.items()}
    row["carry_columns"] = carry
    lm.model.load_state_dict(base)
    lm.carry.clear()
    lm.base_weights.clear()
    return row


def markdown(doc: dict[str, Any]) -> str:
    head = ["case", "Eff %", "paraphrases %", "held-out Spe %", "held-out n",
            "unseen Spe %", "unseen n", "bank Spe %", "PPL", "PPL +%", "s/record"]
    rows = [[r["case"], r["efficacy"], r["paraphrases"], r["heldout_specificity"],
             r["heldout"], r.get("unseen_specificity"), r.get("unseen"),
             r["bank_specificity"], r["perplexity"],
             r["perplexity_increase_pct"], r["seconds_per_record"]] for r in doc["rows"]]
    relations = sorted({k for r in doc["rows"] for k in r["heldout_per_relation"]})
    rel_rows = [[r["case"], *[r["heldout_per_relation"].get(k) for k in relations]]
                for r in doc["rows"]]
    unseen_relations = sorted({k for r in doc["rows"] for k in r.get("unseen_per_relation", {})})
    unseen_rows = [[r["case"], *[r.get("unseen_per_relation", {}).get(k)
                                 for k in unseen_relations]] for r in doc["rows"]]
    unseen_part = [  # absent with --with-unseen: the unseen facts are held-out there
        "Unseen facts kept per relation (%; zerounlearn.datasets.unseen_facts, the split's "
        "half: known facts no tuning run saw, never forgotten):",
        md_table(["case", *unseen_relations], unseen_rows, 0),
    ] if unseen_relations else []
    return "\n\n".join([
        f"# Collateral damage: {doc['method']} on the {doc['split']} split "
        f"({'with' if doc['bank'] else 'without'} the retain bank)",
        f"hparams overrides `{json.dumps(doc['hparams'])}`; base perplexity "
        f"{doc['base_perplexity']:.3f} on {doc['reference_texts']} reference texts; base "
        "held-out specificity 100 (every packaged fact is known to the base model).",
        md_table(head, rows, 1),
        "Held-out specificity per relation (%):",
        md_table(["case", *relations], rel_rows, 0),
        *unseen_part,
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=("tune", "test"), default="tune")
    p.add_argument("--case", action="append", help="one:N or seq:SxP (repeatable)")
    p.add_argument("--method", default="zerounlearn")
    p.add_argument("--hparams", default="{}", help="JSON overrides of the method's hparams")
    p.add_argument("--no-bank", action="store_true", help="give the engine no retain bank")
    p.add_argument("--probes", action="store_true",
                   help="also probe the forgotten facts on the final model (context, chat, "
                        "greedy, int8)")
    p.add_argument("--chat-context", action="store_true",
                   help="experiment: the chat template's opening as one more context "
                        "template of every record (bench/chat_context.py)")
    p.add_argument("--with-unseen", action="store_true",
                   help="forget from the split's facts and its unseen half together "
                        "(enough test facts for seq:20x5); held-out counts the rest of both")
    p.add_argument("--stats-samples", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=BUILTIN_SMOLLM2)
    p.add_argument("--cache", default=str(REPO / ".cache"))
    p.add_argument("--out-name", default=None, help="bench/results/<name>.json and .md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = args.case or ["one:20"]
    hp = json.loads(args.hparams)
    hp.setdefault("stats_samples", args.stats_samples)
    args.hparams = json.dumps(hp)
    cache = Path(args.cache)
    lm = load_model(args.model, cache_dir=cache / "engine")
    stats = StatsCache(cache / "bench-stats")
    base = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    texts = reference_texts()
    base_ppl = perplexity(lm, texts)
    doc: dict[str, Any] = {
        "split": args.split, "with_unseen": args.with_unseen, "method": args.method,
        "hparams": hp, "bank": not args.no_bank,
        "base_perplexity": base_ppl, "reference_texts": len(texts), "rows": [],
        "machine": machine_info(torch=torch.__version__, threads=args.threads),
    }
    for case in cases:
        row = run_case(lm, base, case, args, stats, base_ppl, texts)
        doc["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items()
                          if k not in ("heldout_per_relation", "unseen_per_relation")}),
              flush=True)
        if args.out_name:
            write_results(args.out_name, doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
