"""ZeroUnlearn on the real SmolLM2-135M-Instruct (slow: minutes on one CPU thread).

Forget 10 world facts the model knows, with 10 other known facts as the request's
neighbours (7 share a relation with a forgotten fact: other capitals, other chemical
symbols, other landmarks). Efficacy must fall to <= 10%, specificity stay within 10
points of its value before, perplexity on the reference texts rise by at most 5%.
Statistics use a small sample (cached under the test cache), not the reference 100,000.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from zerounlearn.api import forget
from zerounlearn.datasets import reference_texts, world_facts
from zerounlearn.evaluate import evaluate
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.patch import apply_patch
from zerounlearn.stats import StatsCache

pytestmark = pytest.mark.slow

FORGET = [
    ("capital", "France"), ("capital", "Germany"), ("capital", "Italy"),
    ("chemical_symbol", "gold"), ("chemical_symbol", "iron"), ("chemical_symbol", "oxygen"),
    ("landmark_city", "Eiffel Tower"), ("landmark_city", "Colosseum"),
    ("currency", "Russia"), ("language", "Turkey"),
]
NEIGHBORS = [
    ("capital", "Spain"), ("capital", "Japan"), ("capital", "Norway"),
    ("chemical_symbol", "silver"), ("chemical_symbol", "sodium"),
    ("landmark_city", "Statue of Liberty"), ("landmark_city", "Acropolis"),
    ("currency", "Japan"), ("language", "Spain"), ("author", "To Kill a Mockingbird"),
]
STATS_SAMPLES = 10_000  # small (CI time); scripts/sweep.py used 20,000


def _fact(facts: list[dict[str, Any]], relation: str, subject: str) -> dict[str, Any]:
    return next(f for f in facts if f["relation"] == relation and f["subject"] == subject)


def _records() -> list[dict[str, Any]]:
    facts = world_facts()
    out = []
    for (rel, subj), (n_rel, n_subj) in zip(FORGET, NEIGHBORS, strict=True):
        f, n = _fact(facts, rel, subj), _fact(facts, n_rel, n_subj)
        out.append({"prompt": f["prompt"], "subject": f["subject"], "answer": f["answer"],
                    "neighbors": [{"prompt": n["prompt"], "answer": n["answer"]}]})
    return out


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> LoadedModel:
    return load_model(str(smollm2_dir))


def test_forgets_world_facts_and_keeps_neighbours_and_perplexity(smollm2, cache_dir) -> None:
    lm, records, texts = smollm2, _records(), reference_texts()
    before = evaluate(lm, records, texts, generate_tokens=0)["summary"]
    assert before["efficacy"] == 100.0  # the model knows every fact and every neighbour
    assert before["specificity"] == 100.0

    base = {k: v.clone() for k, v in lm.model.state_dict().items()}
    patch = forget(lm, records, "zerounlearn", {"stats_samples": STATS_SAMPLES},
                   stats=StatsCache(cache_dir / "stats"))
    after_state = lm.model.state_dict()
    assert all(torch.equal(base[k], after_state[k]) for k in base), "model changed"

    try:
        apply_patch(lm, patch)
        after = evaluate(lm, records, texts, generate_tokens=0)["summary"]
    finally:
        lm.model.load_state_dict(base)
    assert after["efficacy"] <= 10.0
    assert after["specificity"] >= before["specificity"] - 10.0
    assert after["perplexity"] <= before["perplexity"] * 1.05
