"""What the answer paths cost, and what a cheaper search keeps: one model load.

`drop_answer_paths` continues each record's prompt greedily after each of its target's
top k tokens and takes the mass off the tokens whose sentence names the answer. This
bench builds SmolLM2's targets (the hparams file's neutral target and blend) for the
one:N facts of a split, runs the reference search (the file's top k, 16 new tokens) and
each cheaper variant, and reports per variant its time, how many continuations it ran,
and the target mass it removes against the reference's (missed: mass the reference took
off that the variant leaves; extra: the reverse).

    python bench/answer_paths_cost.py --split tune --n 50 \\
        --variant '{"top_k": 8, "min_mass": 0.02}' --variant '{"top_k": 8, "new": 8}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.bench_collateral import as_record  # noqa: E402
from bench.collateral_variants import one_case  # noqa: E402
from bench.common import machine_info, md_table, write_results  # noqa: E402
from zerounlearn.config import config_for_model  # noqa: E402
from zerounlearn.keys import prepare_requests  # noqa: E402
from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.methods.zerounlearn import with_generic_targets  # noqa: E402
from zerounlearn.records import validate_records  # noqa: E402


def removed_mass(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(n, V) mass each search took off the (n, V) targets, before renormalising."""
    return before * (after == 0) * (before > 0)


def followed(dists: torch.Tensor, top_k: int, min_mass: float) -> int:
    """How many continuations the search runs: each row's top_k tokens with mass, and
    at least min_mass of it (drop_answer_paths' rule)."""
    kth = dists.topk(top_k, -1).values[:, -1:]  # (n, 1)
    return int(((dists > 0) & (dists >= kth) & (dists >= min_mass)).sum())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=("tune", "test"), default="tune")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--variant", action="append", default=[],
                   help='JSON: {"top_k": k, "min_mass": m, "new": tokens}')
    p.add_argument("--out-name", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    lm = load_model(BUILTIN_SMOLLM2)
    cfg = config_for_model("zerounlearn", lm, None)
    forgotten, _ = one_case(args.split, args.n)
    records = validate_records([as_record(f) for f in forgotten])
    requests = prepare_requests(lm, records, cfg.neutral_target)
    plain = dataclasses.replace(cfg, answer_path_top_k=0)
    base = torch.stack([r.target_dist for r in with_generic_targets(lm, requests, plain)])

    from zerounlearn.neutral import drop_answer_paths

    def run(top_k: int, min_mass: float, new: int) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        out = drop_answer_paths(lm, requests, base, top_k, max_new_tokens=new,
                                min_mass=min_mass)
        return out, time.perf_counter() - start

    reference, ref_s = run(cfg.answer_path_top_k, 0.0, 16)
    ref_removed = removed_mass(base, reference)
    rows = [{"variant": f"reference (top {cfg.answer_path_top_k}, 16 tokens)",
             "continuations": followed(base, cfg.answer_path_top_k, 0.0),
             "seconds": round(ref_s, 1), "removed": round(float(ref_removed.sum()), 3),
             "missed": 0.0, "extra": 0.0}]
    for text in args.variant:
        v = {"top_k": cfg.answer_path_top_k, "min_mass": 0.0, "new": 16, **json.loads(text)}
        out, secs = run(v["top_k"], v["min_mass"], v["new"])
        removed = removed_mass(base, out)
        rows.append({"variant": json.dumps(v),
                     "continuations": followed(base, v["top_k"], v["min_mass"]),
                     "seconds": round(secs, 1), "removed": round(float(removed.sum()), 3),
                     "missed": round(float((ref_removed - removed).clamp_min(0).sum()), 3),
                     "extra": round(float((removed - ref_removed).clamp_min(0).sum()), 3)})
        print(json.dumps(rows[-1]), flush=True)
    doc = {"split": args.split, "facts": args.n, "rows": rows, "machine": machine_info()}
    print(json.dumps(doc, indent=1))
    if args.out_name:
        write_results(args.out_name, doc, f"# Answer paths, {args.split} split, one:{args.n}"
                      "\n\n" + md_table(list(rows[0]), [list(r.values()) for r in rows]))
    return doc


if __name__ == "__main__":
    main()
