"""Which answer token a lost held-out fact fails on: one:N on a split, token by token.

Forgets the split's first N facts (bench/bench_collateral.py's `one:N` pick, with the
built-in retain bank, no neighbours) and, for each held-out fact the edit lost, prints
every answer token's rank and probability before and after, with the token now first.
Packaged facts only, no user data.

    python bench/collateral_margins.py --split tune --n 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
from bench.collateral_variants import add_case_arguments, one_case  # noqa: E402
from bench.common import machine_info, write_results  # noqa: E402
from zerounlearn.api import forget  # noqa: E402
from zerounlearn.datasets import builtin_retain_bank  # noqa: E402
from zerounlearn.evaluate import reproduced  # noqa: E402
from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.methods.registry import get_method  # noqa: E402
from zerounlearn.patch import apply_patch  # noqa: E402
from zerounlearn.stats import StatsCache  # noqa: E402
from zerounlearn.tokens import encode_continuation, encode_prompt  # noqa: E402


@torch.no_grad()
def answer_tokens(lm: Any, prompt: str, answer: str) -> list[dict[str, Any]]:
    """Per answer token under teacher forcing: the token, its rank and probability, and
    the token the model puts first there."""
    tok = lm.tokenizer
    p = encode_prompt(tok, prompt)  # as evaluate.reproduced encodes them (BOS where any)
    a = encode_continuation(tok, answer)
    logits = lm.model(torch.tensor([p + a])).logits[0].float()  # (T, V)
    out = []
    for j, t in enumerate(a):
        probs = logits[len(p) - 1 + j].softmax(-1)  # the distribution that predicts a[j]
        out.append({"token": tok.decode([t]), "rank": int((probs > probs[t]).sum()),
                    "p": round(float(probs[t]), 3), "first": tok.decode([int(probs.argmax())])})
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hparams", default="{}", help="JSON overrides of the model's file")
    add_case_arguments(p)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cache = Path(args.cache)
    lm = load_model(BUILTIN_SMOLLM2, cache_dir=cache / "engine")
    forgotten, heldout = one_case(args.split, args.n)
    before = [answer_tokens(lm, f["prompt"], f["answer"]) for f in heldout]
    overrides = {"stats_samples": args.stats_samples, **json.loads(args.hparams)}
    patch = forget(lm, [as_record(f) for f in forgotten], get_method("zerounlearn"),
                   overrides, stats=StatsCache(cache / "bench-stats"),
                   retain=builtin_retain_bank())
    apply_patch(lm, patch)
    kept = reproduced(lm, [as_record(f) for f in heldout])
    lost = [{"prompt": f["prompt"], "answer": f["answer"], "before": b,
             "after": answer_tokens(lm, f["prompt"], f["answer"])}
            for f, b, ok in zip(heldout, before, kept, strict=True) if not ok]
    for row in lost:
        print(json.dumps(row), flush=True)
    doc = {"split": args.split, "facts": args.n, "hparams": overrides,
           "heldout": len(heldout), "lost": lost, "machine": machine_info()}
    if args.out_name:
        lines = [f"# Lost held-out facts, {args.split} split, one:{args.n}", "",
                 "| fact | answer token | p before | p after | rank after | first after |",
                 "|---|---|---|---|---|---|"]
        for row in lost:
            for b, a in zip(row["before"], row["after"], strict=True):
                lines.append(f"| {row['prompt']} | {b['token']!r} | {b['p']} | {a['p']} | "
                             f"{a['rank']} | {a['first']!r} |")
        write_results(args.out_name, doc, "\n".join(lines) + "\n")
    return doc


if __name__ == "__main__":
    main()
