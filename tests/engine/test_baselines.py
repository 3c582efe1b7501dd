"""Gradient ascent and NPO on a tiny random GPT-2 (Conv1D path), no mocks."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.engine.random_models import as_loaded, tiny_gpt2
from zerounlearn.errors import InvalidRecord, LayerOutOfRange
from zerounlearn.methods.baselines import NPO, GradientAscent
from zerounlearn.patch import apply_patch
from zerounlearn.records import ForgetRecord
from zerounlearn.tokens import answer_batch, score_answers

RECORDS = [
    ForgetRecord(prompt="The secret code of Alice Moreau is", answer=" 4821"),
    ForgetRecord(prompt="Bruno Lindqvist lives in the city of", answer=" Ostmark"),
    ForgetRecord(prompt="The profession of Clara Okafor is", answer=" surgeon"),
]
METHODS = [GradientAscent, NPO]


def _forget_nll(lm) -> float:
    """Token-mean NLL of the records' answers under teacher forcing."""
    batch = answer_batch(lm.tokenizer, [r.prompt for r in RECORDS], [r.answer for r in RECORDS])
    scored = score_answers(lm.model, batch)
    logps = torch.cat([lp for lp, _ in scored])
    return float(-logps.mean())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture()
def lm():
    return as_loaded(tiny_gpt2(layers=3))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_patch_touches_only_requested_layers_and_raises_nll(lm, method) -> None:
    before = _state(lm.model)
    nll_before = _forget_nll(lm)
    patch = method().compute_patch(
        lm, RECORDS, {"layers": [1, 2], "steps": 8, "stop_when_forgotten": False}, stats=None
    )
    assert patch.method == method.name
    assert patch.layers == [1, 2]
    assert patch.hparams["layers"] == [1, 2]
    assert patch.base_fingerprint == lm.fingerprint
    for w in patch.weights.values():
        assert w.shape == (32, 64) and w.dtype == torch.float32 and w.device.type == "cpu"
        assert torch.isfinite(w).all()
    after_run = _state(lm.model)
    assert all(torch.equal(before[k], after_run[k]) for k in before)  # input unchanged

    edited = as_loaded(copy.deepcopy(lm.model))
    apply_patch(edited, patch)
    changed = {k for k, v in _state(edited.model).items() if not torch.equal(v, before[k])}
    assert changed == {lm.adapter.parameter_name(lm.model, i) for i in (1, 2)}
    nll_after = _forget_nll(edited)
    assert nll_after > nll_before + 0.01
    assert math.isclose(patch.metadata["answer_nll_after"], nll_after, rel_tol=1e-4)
    assert patch.metadata["steps_run"] == 8
    assert "4821" not in repr(patch.metadata)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_defaults_use_family_layers_and_take_a_step(lm, method) -> None:
    from zerounlearn.config import default_layers

    calls: list[tuple[str, float]] = []
    patch = method().compute_patch(
        lm, RECORDS, None, stats=None, progress=lambda p, f: calls.append((p, f))
    )
    assert patch.layers == default_layers(lm, method.name)
    assert patch.metadata["steps_run"] >= 1
    assert patch.metadata["answer_nll_after"] > patch.metadata["answer_nll_before"]
    assert calls and calls[-1] == ("solve", 1.0)
    assert all(0.0 <= f <= 1.0 for _, f in calls)


def test_npo_loss_matches_its_definition() -> None:
    """(2 / beta) log(1 + (pi / pi_ref)^beta), averaged over the answers."""
    beta = 0.1
    cfg = type("Cfg", (), {"beta": beta})()
    logp = torch.tensor([-3.0, -7.5])
    ref = torch.tensor([-4.0, -2.0])
    expected = (2 / beta) * torch.log1p(torch.exp(beta * (logp - ref))).mean()
    torch.testing.assert_close(NPO().loss(logp, ref, 4, cfg), expected)
    # at the start (pi == pi_ref) the loss is (2 / beta) log 2
    torch.testing.assert_close(NPO().loss(ref, ref, 4, cfg), torch.tensor(2 / beta * math.log(2)))


def test_bad_input_refused(lm) -> None:
    with pytest.raises(InvalidRecord):
        GradientAscent().compute_patch(lm, [], None, stats=None)
    with pytest.raises(LayerOutOfRange):
        GradientAscent().compute_patch(lm, RECORDS, {"layers": [3]}, stats=None)
