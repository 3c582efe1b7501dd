"""Neutral targets on every family's trained tiny model (tests/support/tiny_families.py).

The test suite's check (tests/engine/test_trained_families.py) with each variant of
hyper-parameters instead of the defaults alone: per family, the 3 facts it forgets (a
city and two professions), how many of them are still reproduced and the share of the
other known facts kept. The families without a hyper-parameter file end the text
(`neutral_target` "endoftext"); this measures whether SmolLM2's target would serve them.

    python bench/families_neutral.py --out-name families-neutral-v11 \\
        '{}' '{"neutral_target":"own","generic_share":0.5,"answer_path_top_k":8}'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import machine_info, md_table, write_results  # noqa: E402
from tests.engine.test_trained_families import FORGET, _known_like  # noqa: E402
from tests.support.tiny_families import FAMILIES, build_tiny_family, family_facts  # noqa: E402
from zerounlearn.api import forget  # noqa: E402
from zerounlearn.evaluate import reproduced  # noqa: E402
from zerounlearn.loading import load_model  # noqa: E402
from zerounlearn.patch import apply_patch  # noqa: E402
from zerounlearn.stats import StatsCache  # noqa: E402


def measure(lm: Any, stats: StatsCache, hparams: dict[str, Any]) -> dict[str, Any]:
    facts = family_facts()
    known = reproduced(lm, facts)
    forget_set = [facts[_known_like(i, known)] for i in FORGET]
    others = [f for f, ok in zip(facts, known, strict=True) if ok and f not in forget_set]
    records = [{"prompt": f["prompt"], "subject": f["subject"], "answer": f["answer"]}
               for f in forget_set]
    base = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    patch = forget(lm, records, "zerounlearn", hparams or None, stats=stats)
    try:
        apply_patch(lm, patch)
        left = sum(reproduced(lm, forget_set))
        kept = 100.0 * sum(reproduced(lm, others)) / len(others)
    finally:
        lm.model.load_state_dict(base)
        lm.carry.clear()
    return {"left": left, "kept_pct": round(kept, 1), "others": len(others),
            "rounds": patch.metadata.get("rounds")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="*", default=["{}"], help="JSON hparams overrides")
    p.add_argument("--cache", default=".cache")
    p.add_argument("--out-name", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cache = Path(args.cache)
    stats = StatsCache(cache / "tiny-family-stats")
    rows = []
    for family in FAMILIES:
        lm = load_model(str(build_tiny_family(family, cache / "tiny-families" / family)))
        for text in args.variants:
            row = {"family": family, "variant": text, **measure(lm, stats, json.loads(text))}
            print(json.dumps(row), flush=True)
            rows.append(row)
    doc = {"rows": rows, "machine": machine_info(torch=torch.__version__, threads=1)}
    if args.out_name:
        head = ["family", "variant", "left of 3", "kept %", "others", "rounds"]
        write_results(args.out_name, doc, "# Neutral targets on the trained tiny families\n\n"
                      + md_table(head, [[r["family"], r["variant"], r["left"], r["kept_pct"],
                                         r["others"], r["rounds"]] for r in rows]))
    return doc


if __name__ == "__main__":
    main()
