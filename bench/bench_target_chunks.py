"""The target optimisation in one padded batch against chunks of similar length.

Optimises SmolLM2's neutral targets for the test split's first N facts (the default
settings: generic targets at the last edited layer, the model's context templates)
twice each way, alternating, in one process, and reports the seconds and how far the
two results differ (zerounlearn/target_chunks.py: they should agree up to rounding).
Packaged facts only, no user data.

    python bench/bench_target_chunks.py --n 50 --out-name target-chunks-n50
"""

from __future__ import annotations

import argparse
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

from bench.bench_collateral import as_record  # noqa: E402
from bench.common import machine_info, md_table, write_results  # noqa: E402
from zerounlearn.config import config_for_model  # noqa: E402
from zerounlearn.datasets import split_facts  # noqa: E402
from zerounlearn.keys import prepare_requests  # noqa: E402
from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.methods.zerounlearn import neutral_goal, with_generic_targets  # noqa: E402
from zerounlearn.records import validate_records  # noqa: E402
from zerounlearn.target_chunks import TARGET_CHUNK_TOKENS  # noqa: E402
from zerounlearn.targets import DeltaResult, TargetSettings, optimize_deltas  # noqa: E402
from zerounlearn.templates import TemplateCache  # noqa: E402

ONE_BATCH = 10**9  # a budget no request reaches: every row in one chunk


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50, help="test-split facts")
    p.add_argument("--repeats", type=int, default=2, help="runs of each way, alternating")
    p.add_argument("--cache", default=str(REPO / ".cache"))
    p.add_argument("--out-name", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lm = load_model(BUILTIN_SMOLLM2, cache_dir=Path(args.cache) / "engine")
    recs = validate_records([as_record(f) for f in split_facts("test")[: args.n]])
    cfg = config_for_model("zerounlearn", lm, {})
    requests = with_generic_targets(lm, prepare_requests(lm, recs, cfg.neutral_target), cfg)
    templates = TemplateCache().get(lm, cfg.template_count, cfg.template_tokens,
                                    cfg.template_seed)
    targets, soft = neutral_goal(requests)
    layer = list(cfg.layers or [])[-1]
    seconds: dict[str, list[float]] = {"one batch": [], "chunks": []}
    results: dict[str, DeltaResult] = {}
    for _ in range(args.repeats):
        for way, budget in (("one batch", ONE_BATCH), ("chunks", TARGET_CHUNK_TOKENS)):
            start = time.perf_counter()
            results[way] = optimize_deltas(
                lm, requests, templates, targets, point="block", layer=layer,
                settings=TargetSettings.from_hparams(cfg), soft=soft, max_tokens=budget)
            seconds[way].append(round(time.perf_counter() - start, 1))
            print(way, seconds[way][-1], "s", flush=True)
    one, chunked = results["one batch"], results["chunks"]
    doc = {
        "facts": args.n, "layer": layer, "chunk_tokens": TARGET_CHUNK_TOKENS,
        "seconds": seconds,
        "ratio": round(min(seconds["chunks"]) / min(seconds["one batch"]), 3),
        "delta_max_rel_diff": float((one.delta - chunked.delta).abs().max()
                                    / one.delta.abs().max()),
        "nll_max_diff": float((one.nll - chunked.nll).abs().max()),
        "same_steps": bool(torch.equal(one.steps, chunked.steps)),
        "machine": machine_info(),
    }
    print(doc, flush=True)
    if args.out_name:
        table = md_table(["way", "seconds per run"],
                         [[w, " / ".join(str(x) for x in s)] for w, s in seconds.items()])
        write_results(args.out_name, doc,
                      f"# Target optimisation, {args.n} test facts\n\n{table}\n\nchunks / "
                      f"one batch (fastest runs): {doc['ratio']}; deltas differ by "
                      f"{doc['delta_max_rel_diff']:.1e} of their largest, same steps: "
                      f"{doc['same_steps']}\n")
    return doc


if __name__ == "__main__":
    main()
