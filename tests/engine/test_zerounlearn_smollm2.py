"""ZeroUnlearn on the real SmolLM2-135M-Instruct (slow: minutes on one CPU thread).

Forget 10 world facts the model knows, with 10 other known facts as the request's
neighbours (7 share a relation with a forgotten fact: other capitals, other chemical
symbols, other landmarks). Efficacy must fall to <= 10%, specificity stay within 10
points of its value before, perplexity on the reference texts rise by at most 5%.
Statistics use a small sample (cached under the test cache), not the reference 100,000.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zerounlearn.api import forget
from zerounlearn.datasets import reference_texts, tuning_records
from zerounlearn.evaluate import evaluate
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.patch import apply_patch
from zerounlearn.stats import StatsCache

pytestmark = pytest.mark.slow

STATS_SAMPLES = 10_000  # small (CI time); scripts/sweep.py used 20,000


def _restore(lm, state) -> None:
    """Back to the unedited model: its weights and its (empty) accumulated carry."""
    lm.model.load_state_dict(state)
    lm.carry.clear()


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> LoadedModel:
    return load_model(str(smollm2_dir))


def test_forgets_world_facts_and_keeps_neighbours_and_perplexity(smollm2, cache_dir) -> None:
    lm, records, texts = smollm2, tuning_records(), reference_texts()
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
        _restore(lm, base)
    assert after["efficacy"] <= 10.0
    assert after["specificity"] >= before["specificity"] - 10.0
    assert after["perplexity"] <= before["perplexity"] * 1.05
