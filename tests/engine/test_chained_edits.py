"""Edits of an edited model take: the tiny GPT-2's second request, on the version its
first request left, forgets its own records in one round and keeps the first's
forgotten. Without the projection-progress rule (min_projected_progress 0; the default
is 0.01) the same second request stays known through every round: its records'
sensitive directions hold the first edit's push towards end-of-text, and projecting
them away undid it."""

from __future__ import annotations

import pytest
import torch

from tests.support.live import records
from tests.support.tiny_model import TINY_HPARAMS
from zerounlearn import solve
from zerounlearn.api import forget
from zerounlearn.evaluate import reproduced
from zerounlearn.loading import LoadedModel
from zerounlearn.patch import apply_patch
from zerounlearn.stats import StatsCache

FIRST, SECOND = [0, 1, 2, 3, 4, 5], [6, 7]


def _records(people: list[int]) -> list[dict]:
    return [r for p in people for r in records(p)]


@pytest.fixture()
def after_first(tiny_lm: LoadedModel, stats: StatsCache):
    """The tiny model with FIRST forgotten; restored (weights and carry) afterwards."""
    base = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    apply_patch(tiny_lm, forget(tiny_lm, _records(FIRST), "zerounlearn", TINY_HPARAMS,
                                stats=stats))
    assert not any(reproduced(tiny_lm, _records(FIRST)))
    yield tiny_lm
    tiny_lm.model.load_state_dict(base)
    tiny_lm.carry.clear()


@pytest.mark.parametrize("rule", [0.01, 0.5, 0.0],
                         ids=["progress-rule", "progress-half", "always-project"])
def test_second_edit_takes_on_an_edited_model(after_first: LoadedModel, stats: StatsCache,
                                              rule: float) -> None:
    lm = after_first
    patch = forget(lm, _records(SECOND), "zerounlearn",
                   {**TINY_HPARAMS, "min_projected_progress": rule}, stats=stats)
    apply_patch(lm, patch)
    second = reproduced(lm, _records(SECOND))
    if rule > 0:
        assert patch.metadata["rounds"] == [len(SECOND)]  # one round took
        assert second == [False] * len(SECOND)
        assert not any(reproduced(lm, _records(FIRST)))
    else:  # the failure the rule fixes: every round leaves both records known
        assert patch.metadata["rounds"] == [len(SECOND)] * 3
        assert any(second)


def test_projected_progress_measures_the_shift_along_the_need() -> None:
    w = torch.eye(2, dtype=torch.float64)  # outputs are the keys themselves
    k_f = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # (d_ff, n)
    v = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)  # need: +e2, +e2
    p_none = torch.eye(2, dtype=torch.float64)
    assert solve.projected_progress(w, k_f, v, p_none).tolist() == [1.0, 1.0]
    q = torch.tensor([[0.0], [1.0]], dtype=torch.float64)  # remove e2
    progress = solve.projected_progress(w, k_f, v, solve.projector(q, 0.0))
    assert progress.tolist() == [0.0, -1.0]  # record 2's own output along e2 is removed
