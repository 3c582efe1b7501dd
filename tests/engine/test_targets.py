"""Batched delta optimisation on the tiny GPT-2: batching, clamps, early stops, units."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.tiny_model import tiny_facts
from zerounlearn.keys import prepare_requests
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.records import ForgetRecord
from zerounlearn.targets import TargetSettings, optimize_deltas
from zerounlearn.templates import TemplateCache


@pytest.fixture(scope="module")
def tiny_lm(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir))


@pytest.fixture(scope="module")
def requests(tiny_lm: LoadedModel):
    facts = tiny_facts()[:4]
    records = [ForgetRecord(f["prompt"], f["answer"], f["subject"]) for f in facts]
    return prepare_requests(tiny_lm, records)


@pytest.fixture(scope="module")
def templates(tiny_lm: LoadedModel) -> list[str]:
    return TemplateCache().get(tiny_lm, count=2, tokens=4, seed=0)


def _run(lm, requests, templates, **kw):
    settings = TargetSettings(**{"steps": 8, "lr": 0.2, **kw})
    return optimize_deltas(lm, requests, templates, [r.target_ids for r in requests],
                           point="block", layer=0, settings=settings)


def test_batched_equals_one_at_a_time(tiny_lm, requests, templates) -> None:
    batched = _run(tiny_lm, requests, templates, batch_records=True)
    single = _run(tiny_lm, requests, templates, batch_records=False)
    torch.testing.assert_close(batched.h, single.h, rtol=1e-5, atol=1e-5)
    # Adam is element-wise and the loss a sum over records: the same path per record,
    # up to float rounding of differently padded batches.
    torch.testing.assert_close(batched.delta, single.delta, rtol=1e-3, atol=1e-3 *
                               float(batched.h.norm(dim=1).max()))
    assert torch.equal(batched.steps, single.steps)
    assert batched.delta.abs().sum() > 0


def test_clamp_is_respected_per_record(tiny_lm, requests, templates) -> None:
    res = _run(tiny_lm, requests, templates, lr=1.0, clamp=0.05, kl_weight=0.0,
               weight_decay=0.0)
    ratio = res.delta.norm(dim=1) / res.h.norm(dim=1)  # (n,)
    assert (ratio <= 0.05 + 1e-5).all()
    assert (ratio > 0.04).all()  # a large step drives every record onto the clamp


def test_early_stop_is_per_record(tiny_lm, requests) -> None:
    # Record 0 "targets" its own true answer: already reached, it must not move.
    targets = [requests[0].answer_ids] + [r.target_ids for r in requests[1:]]
    settings = TargetSettings(steps=6, lr=0.2, stop_loss=0.5, early_stop_on="nll")
    res = optimize_deltas(tiny_lm, requests, [""], targets, point="block", layer=0,
                          settings=settings)
    assert res.steps[0] == 0
    assert torch.count_nonzero(res.delta[0]) == 0
    assert (res.steps[1:] > 0).all()
    assert res.nll[0] < 0.5


def test_relative_units_move_delta_by_lr_times_norm(tiny_lm, requests, templates) -> None:
    # One Adam step moves every coordinate of u by lr: ||delta|| = lr ||h||.
    res = _run(tiny_lm, requests, templates, steps=2, lr=0.05, clamp=10.0, kl_weight=0.0,
               weight_decay=0.0, stop_loss=0.0)
    ratio = res.delta.norm(dim=1) / res.h.norm(dim=1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.05), rtol=1e-3, atol=1e-4)
    absolute = _run(tiny_lm, requests, templates, steps=2, lr=0.05, clamp=10.0,
                    kl_weight=0.0, weight_decay=0.0, stop_loss=0.0, step_units="absolute")
    d_model = res.h.shape[1]
    torch.testing.assert_close(absolute.delta.norm(dim=1),
                               torch.full((len(requests),), 0.05 * d_model ** 0.5),
                               rtol=1e-3, atol=1e-4)


def test_model_is_unchanged_and_frozen_state_restored(tiny_lm, requests, templates) -> None:
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    flags = [p.requires_grad for p in tiny_lm.model.parameters()]
    _run(tiny_lm, requests, templates, steps=3)
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in tiny_lm.model.parameters()]
    assert not tiny_lm.model.training


def test_a_subject_at_position_zero_is_edited_at_the_last_token(tiny_lm: LoadedModel) -> None:
    # The tiny GPT-2's tokenizer adds no BOS: a prompt that starts with its subject puts
    # the subject's last token at position 0, the attention sink shared by every
    # sequence. Such a record is edited at its last token instead (span None).
    fact = tiny_facts()[0]
    first_word = fact["prompt"].split()[0]
    starts, inside = prepare_requests(tiny_lm, [
        ForgetRecord(fact["prompt"], fact["answer"], first_word),
        ForgetRecord(fact["prompt"], fact["answer"], fact["subject"]),
    ])
    assert starts.span is None
    assert inside.span is not None and inside.span[0] > 0
