"""Every supported family forgets on a model trained in the session (issue 10, item 5).

The adapter tests (test_adapters.py) run random weights, which cannot show whether an
edit forgets one fact and keeps the others. Here each family's tiny model, trained on 60
facts (tests/support/tiny_families.py: 3 layers, every fact or all but one recalled),
gets a forget request of 3 facts with DEFAULT settings: method "zerounlearn", no
hyper-parameters but what the family's defaults give (layers from default_edit_layers:
1-2 of 3). It must leave at most 1 of the 3 reproduced and keep at least 80% of the 57
other facts (of those the unedited model knows: the models are trained on the CPU that
runs the tests).

The 3 facts (with their subjects, as a caller sends them) belong to 3 different people:
a city and two professions. Other facts of those relations are the ones at risk. Numeric
answers are left out on purpose: their first token is a bare space (" 1965" -> " ", "1",
...), the same for every fact of the relation, and on these 3-layer models the edit at
the prompt's last token then takes the relation with it (measured: with a secret code
in the request Phi kept 67% of its other facts, Gemma 74%, GPT-2 79%). Moving that space
into the prompt fixed it here but left 2 of the tiny GPT-2's birth years reproduced
(test_zerounlearn_tiny.py), so the engine does not do it (yet).
Measured here on one thread: default kernels / ATEN_CPU_CAPABILITY=avx2, other facts kept
GPT-NeoX 100/100%, OPT 89/93, Phi 93/93, Gemma 98/98, Qwen2 96/95, Mistral and Llama
98/96, GPT-2 88/91, none of the 3 left.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.tiny_families import FAMILIES, family_facts
from tests.support.tiny_model import MIN_RECALL
from zerounlearn.api import forget
from zerounlearn.config import default_layers
from zerounlearn.evaluate import reproduced
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.patch import apply_patch
from zerounlearn.stats import StatsCache

FORGET = (5, 10, 18)  # person 1's city, persons 2 and 4's professions
MAX_LEFT = 1  # of the 3 forgotten facts, at most this many still reproduced
MIN_KEPT = 0.80  # of the other facts, at least this share still reproduced


@pytest.fixture(scope="module")
def stats(cache_dir: Path) -> StatsCache:
    return StatsCache(cache_dir / "tiny-family-stats")


@pytest.fixture(scope="module", params=FAMILIES)
def family_lm(request: pytest.FixtureRequest, cache_dir: Path) -> LoadedModel:
    from tests.support.tiny_families import build_tiny_family

    family = request.param
    return load_model(str(build_tiny_family(family, cache_dir / "tiny-families" / family)))


def _known_like(i: int, known: list[bool]) -> int:
    """Fact i, or where this CPU's model missed it the next known fact of its relation
    (facts[i::4] share one) that is not in FORGET: the request holds known facts."""
    for j in range(i, len(known), 4):
        if known[j] and (j == i or j not in FORGET):
            return j
    raise AssertionError(f"the tiny model knows no fact like {i}")


def _snapshot(lm: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def test_forgets_three_facts_and_keeps_the_others(family_lm: LoadedModel,
                                                  stats: StatsCache) -> None:
    lm = family_lm
    facts = family_facts()
    known = reproduced(lm, facts)
    assert sum(known) >= MIN_RECALL * len(facts), "the tiny model must know its facts"
    forget_set = [facts[_known_like(i, known)] for i in FORGET]
    others = [f for f, ok in zip(facts, known, strict=True) if ok and f not in forget_set]
    records = [{"prompt": f["prompt"], "subject": f["subject"], "answer": f["answer"]}
               for f in forget_set]

    patch = forget(lm, records, "zerounlearn", None, stats=stats)
    assert patch.layers == default_layers(lm) and 0 not in patch.layers

    base, carry = _snapshot(lm), dict(lm.carry)
    try:
        apply_patch(lm, patch)
        left = sum(reproduced(lm, forget_set))
        kept = sum(reproduced(lm, others)) / len(others)
    finally:  # back to the unedited version: weights and its (empty) carry
        lm.model.load_state_dict(base)
        lm.carry.clear()
        lm.carry.update(carry)
    summary = (f"{lm.family}: {left} of {len(forget_set)} forgotten facts still reproduced, "
               f"{kept:.0%} of {len(others)} other facts kept (layers {patch.layers}, "
               f"rounds {patch.metadata.get('rounds')})")
    assert left <= MAX_LEFT, summary
    assert kept >= MIN_KEPT, summary
