"""Hyper-parameter variants on one collateral case, one model load: for tuning on a split.

Each variant (a JSON object of hparams overrides) forgets the same N facts of the split
in one request, with the built-in retain bank and no neighbours, as
bench/bench_collateral.py's `one:N` case does (same facts, same scores); it also lists
which paraphrases still answer and which held-out facts were lost (packaged facts, not
user data). Tune on `--split tune`; report the chosen default with bench_collateral.py
on `--split test`.

    python bench/collateral_variants.py --split tune --out-name collateral-tune-variants \\
        '{}' '{"layers":[19,20,21]}' '{"template_count":10}'
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

from bench.bench_collateral import as_record, kept, paraphrase_pairs, pct, pick  # noqa: E402
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
from zerounlearn.stats import StatsCache  # noqa: E402


def run_variant(lm: Any, base: dict[str, torch.Tensor], overrides: dict[str, Any],
                forgotten: Sequence[dict], heldout: Sequence[dict], method: Any,
                stats: StatsCache, base_ppl: float, texts: Sequence[str],
                unseen: Sequence[dict]) -> dict[str, Any]:
    lm.model.load_state_dict(base)
    lm.carry.clear()
    bank = builtin_retain_bank()
    started = time.perf_counter()
    patch = forget(lm, [as_record(f) for f in forgotten], method, overrides, stats=stats,
                   retain=bank)
    seconds = time.perf_counter() - started
    apply_patch(lm, patch)
    pairs = paraphrase_pairs(forgotten)
    para_flags = reproduced(lm, pairs)
    left_flags = reproduced(lm, [as_record(f) for f in forgotten])
    held = kept(lm, heldout)
    unseen_kept = kept(lm, unseen)
    ppl = perplexity(lm, texts)
    return {
        "hparams": overrides,
        "efficacy": pct(left_flags),
        "paraphrases": pct(para_flags), "heldout_specificity": held["pct"],
        "unseen_specificity": unseen_kept["pct"], "unseen": unseen_kept["n"],
        "bank_specificity": pct(reproduced(lm, bank)),
        "perplexity_increase_pct": round(100.0 * (ppl - base_ppl) / base_ppl, 2),
        "seconds_per_record": round(seconds / len(forgotten), 2),
        "rounds": patch.metadata.get("rounds"),
        "heldout_per_relation": held["per_relation"],
        "unseen_per_relation": unseen_kept["per_relation"],
        "paraphrases_left": [p["prompt"] for p, ok in zip(pairs, para_flags, strict=True) if ok],
        "heldout_lost": held["lost"], "unseen_lost": unseen_kept["lost"],
        "forgotten_left": [f["prompt"] for f, ok in zip(forgotten, left_flags, strict=True)
                           if ok],
    }


def add_case_arguments(p: argparse.ArgumentParser) -> None:
    """The one:N case on a split, the caches and the output name (shared with
    bench/collateral_margins.py)."""
    p.add_argument("--split", choices=("tune", "test"), default="tune")
    p.add_argument("--n", type=int, default=20, help="facts forgotten in the one request")
    p.add_argument("--stats-samples", type=int, default=20_000)
    p.add_argument("--cache", default=str(REPO / ".cache"))
    p.add_argument("--out-name", default=None, help="bench/results/<name>.json and .md")


def one_case(split: str, n: int) -> tuple[list[dict], list[dict]]:
    """The split's facts forgotten by `one:n` (bench_collateral.pick) and the rest."""
    facts = split_facts(split)
    forgotten = pick(facts, n)
    chosen = {f["prompt"] for f in forgotten}
    return forgotten, [f for f in facts if f["prompt"] not in chosen]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+", help="JSON objects of hparams overrides")
    p.add_argument("--method", default="zerounlearn")
    add_case_arguments(p)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cache = Path(args.cache)
    lm = load_model(BUILTIN_SMOLLM2, cache_dir=cache / "engine")
    stats = StatsCache(cache / "bench-stats")  # bench_collateral.py's cache
    base = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    texts = reference_texts()
    base_ppl = perplexity(lm, texts)
    forgotten, heldout = one_case(args.split, args.n)
    unseen = unseen_facts(args.split)  # scored as held-out, never forgotten
    method = get_method(args.method)
    rows = []
    for text in args.variants:
        overrides = json.loads(text)
        overrides.setdefault("stats_samples", args.stats_samples)
        row = run_variant(lm, base, overrides, forgotten, heldout, method, stats, base_ppl,
                          texts, unseen)
        print(json.dumps(row), flush=True)
        rows.append(row)
    doc = {"split": args.split, "facts": args.n, "method": args.method,
           "base_perplexity": round(base_ppl, 3), "rows": rows, "machine": machine_info()}
    if args.out_name:
        table = md_table(
            ["hparams", "Eff %", "paraphrases %", "held-out Spe %", "unseen Spe %",
             "bank Spe %", "PPL +%", "s/record"],
            [[json.dumps(r["hparams"]), r["efficacy"], r["paraphrases"],
              r["heldout_specificity"], r["unseen_specificity"], r["bank_specificity"],
              r["perplexity_increase_pct"],
              r["seconds_per_record"]] for r in rows], 1)
        write_results(args.out_name, doc, f"# Variants, {args.split} split, one:{args.n}\n\n"
                      + table)
    return doc


if __name__ == "__main__":
    main()
