"""Hyper-parameter sweep of ZeroUnlearn on SmolLM2-135M-Instruct with the packaged world facts.

Forgets FORGET (10 facts over 5 relations) with NEIGHBORS (10 other known facts, 7 of
them sharing a relation with a forgotten one) attached as the request's neighbours, then
measures efficacy, generalisation (known paraphrases), specificity and perplexity on the
packaged reference texts. The model, the context templates and the statistics
(StatsCache under .cache/stats, shared with the slow SmolLM2 test) are shared across configurations.

    python scripts/sweep.py                      # the focused default grid
    python scripts/sweep.py --only paper,ours    # some configurations
    python scripts/sweep.py --list               # names of the configurations

Prints a table (Eff, Gen, Spe, PPL, seconds) and writes bench/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zerounlearn.api import forget  # noqa: E402
from zerounlearn.datasets import (  # noqa: E402
    TUNING_FORGET,
    TUNING_NEIGHBORS,
    reference_texts,
    tuning_records,
)
from zerounlearn.evaluate import evaluate  # noqa: E402
from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.methods.registry import get_method  # noqa: E402
from zerounlearn.patch import apply_patch  # noqa: E402
from zerounlearn.stats import StatsCache  # noqa: E402
from zerounlearn.templates import TemplateCache  # noqa: E402

FORGET, NEIGHBORS = TUNING_FORGET, TUNING_NEIGHBORS

SAMPLES = 20_000  # statistics tokens: small on purpose (CPU); the reference uses 100,000
COMMON = {"stats_samples": SAMPLES}

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # the paper's form and settings (layers 16-18 of 30, optimised M_f, absolute lr 0.1)
    "paper": ("zerounlearn-paper", {}),
    # the spec's best spike: key-gated, b = 5000, layers 20-22, M_f = W K_f
    "gated-mult": ("zerounlearn", {"layers": [20, 21, 22], "update": "multiplicative",
                                   "corpus_weight": 15000, "preserve_weight": 0}),
    "gated-mult-keep": ("zerounlearn", {"layers": [20, 21, 22], "update": "multiplicative",
                                        "preserve_weight": 50}),
    "gated-add": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                  "preserve_weight": 0}),
    "gated-add-keep": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                       "preserve_weight": 50}),
    "gated-add-keep500": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                          "preserve_weight": 500}),
    "gated-add-keep-16": ("zerounlearn", {"layers": [16, 17, 18], "update": "additive",
                                          "preserve_weight": 50}),
    "global-add-keep": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                        "orthogonality": "global", "forget_weight": 50,
                                        "preserve_weight": 50}),
    "gated-add-keep-lr05": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                            "preserve_weight": 50, "target_lr": 0.05}),
    "gated-add-keep-lr2": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                           "preserve_weight": 50, "target_lr": 0.2}),
    "gated-add-keep-idk": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                           "preserve_weight": 50,
                                           "neutral_target": " I don't know."}),
    "gated-add-keep-c04": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                           "preserve_weight": 50, "clamp": 0.4}),
    "gated-mult-keep-c04": ("zerounlearn", {"layers": [20, 21, 22],
                                            "update": "multiplicative", "preserve_weight": 50,
                                            "clamp": 0.4}),
    "gated-add-keep-eps": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                           "preserve_weight": 50, "eps": 0.1}),
    "gated-add-keep-mopt": ("zerounlearn", {"layers": [20, 21, 22], "update": "additive",
                                            "preserve_weight": 50,
                                            "sensitive_state": "optimized"}),
    "late-add-keep": ("zerounlearn", {"layers": [23, 24, 25], "update": "additive",
                                      "corpus_weight": 100_000, "preserve_weight": 50}),
    "late-add-keep200": ("zerounlearn", {"layers": [23, 24, 25], "update": "additive",
                                         "corpus_weight": 100_000, "preserve_weight": 200}),
    "ours": ("zerounlearn", {}),  # whatever hparams/zerounlearn/smollm2.json says now
}
for _name, (_method, _ov) in CONFIGS.items():  # the early grid used the paper's a = 15000
    if _name.startswith(("gated-", "global-")):
        _ov.setdefault("corpus_weight", 15000)
DEFAULT_GRID = ["paper", "gated-mult", "gated-add-keep", "late-add-keep", "ours"]


def summary(result: dict[str, Any]) -> dict[str, Any]:
    s = result["summary"]
    return {k: s.get(k) for k in ("efficacy", "generalization", "specificity", "perplexity")}


def run(names: list[str], cache: Path, out: Path) -> list[dict[str, Any]]:
    lm = load_model(BUILTIN_SMOLLM2, cache_dir=cache / "engine")
    stats = StatsCache(cache / "stats")  # shared with the slow test
    templates = TemplateCache()
    records = tuning_records()
    texts = reference_texts()
    rows = [{"name": "base", "method": "-", "overrides": {}, "seconds": 0.0,
             **summary(evaluate(lm, records, texts, generate_tokens=0))}]
    _print(rows[-1], header=True)
    for name in names:
        method, overrides = CONFIGS[name]
        impl = get_method(method)
        impl.templates = templates  # shared: sampled once per model
        originals = None
        t0 = time.perf_counter()
        patch = forget(lm, records, method, {**COMMON, **overrides}, stats=stats)
        seconds = time.perf_counter() - t0
        originals = {layer: lm.adapter.get_weight(lm.model, layer) for layer in patch.layers}
        apply_patch(lm, patch)
        try:
            scores = summary(evaluate(lm, records, texts, generate_tokens=0))
        finally:
            for layer, w in originals.items():
                lm.adapter.set_weight(lm.model, layer, w)
        rows.append({"name": name, "method": method, "overrides": overrides,
                     "seconds": round(seconds, 1), **scores,
                     "timings": patch.metadata.get("timings"),
                     "target_nll": patch.metadata.get("target_nll")})
        _print(rows[-1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"samples": SAMPLES, "forget": FORGET, "neighbors": NEIGHBORS,
                                   "rows": rows}, indent=2))
    return rows


def _print(row: dict[str, Any], header: bool = False) -> None:
    if header:
        print(f"{'config':22s} {'Eff':>6s} {'Gen':>6s} {'Spe':>6s} {'PPL':>7s} {'sec':>7s}")

    def pct(x: Any) -> str:
        return "-" if x is None else f"{x:6.1f}"

    ppl = row.get("perplexity")
    print(f"{row['name']:22s} {pct(row['efficacy'])} {pct(row['generalization'])} "
          f"{pct(row['specificity'])} {'-' if ppl is None else f'{ppl:7.2f}'} "
          f"{row['seconds']:7.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--list", action="store_true", help="list configurations and exit")
    parser.add_argument("--cache", default=os.environ.get("ZEROUNLEARN_TEST_CACHE",
                                                         str(REPO / ".cache")))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "sweep.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=JSON",
                        help='an ad-hoc "zerounlearn" configuration, e.g. '
                             'x=\'{"clamp": 0.5}\' (repeatable; runs after --only)')
    args = parser.parse_args()
    extra = []
    for item in args.extra:
        name, _, overrides = item.partition("=")
        CONFIGS[name] = ("zerounlearn", json.loads(overrides))
        extra.append(name)
    if args.list:
        for name, (method, ov) in CONFIGS.items():
            print(f"{name:22s} {method:18s} {json.dumps(ov)}")
        return
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    names = args.only.split(",") if args.only else ([] if extra else DEFAULT_GRID)
    names += extra
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(unknown)}")
    run(names, Path(args.cache), Path(args.out))


if __name__ == "__main__":
    main()
