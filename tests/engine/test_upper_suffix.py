"""The upper blocks on the last positions only (upper_suffix.py): for every supported
family the suffix gives the whole stack's outputs, also with a delta added at the
suffix, and the neutral-target optimisation that uses it agrees with whole rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.engine.random_models import as_loaded
from tests.engine.test_upper_stack import (
    FAMILIES,
    OPT_POST_NORM,
    _batch,
    _full_logits,
    random_model,
    tiny_llama,
)
from tests.support.tiny_model import tiny_facts
from zerounlearn.keys import prepare_requests
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.records import ForgetRecord
from zerounlearn.targets import TargetSettings, optimize_deltas
from zerounlearn.upper import capture_stack
from zerounlearn.upper_suffix import SuffixStack, suffix_stack


@pytest.mark.parametrize(("model_type", "extra"), FAMILIES,
                         ids=[f"{mt}{'-postnorm' if e is OPT_POST_NORM else ''}"
                              for mt, e in FAMILIES])
def test_suffix_gives_the_whole_stacks_outputs(model_type: str, extra: dict) -> None:
    """Rows of 9, 6 and 4 tokens (right-padded), the stack from block 1: from every
    start, the suffix's outputs equal the whole stack's at the same positions, clean and
    with a shift at the suffix's positions (the prefix keys stay the clean pass's)."""
    model = random_model(model_type, extra)
    lm = as_loaded(model, model_type)
    ids, mask = _batch()
    stack, _ = capture_stack(lm, lambda: _full_logits(model, ids, mask), 1)
    assert stack.hidden is not None
    gen = torch.Generator().manual_seed(3)
    for start in (1, 3, 5, 8):
        suffix = suffix_stack(stack, start)
        shift = torch.zeros_like(stack.hidden)
        shift[:, start:] = torch.randn(shift[:, start:].shape, generator=gen)
        for extra_input in (torch.zeros_like(shift), shift):
            x = stack.hidden + extra_input
            whole = stack.run(x)[:, start:]  # (3, 9 - start, d)
            got = suffix.run(x[:, start:])
            scale = max(1.0, float(whole.abs().max()))
            assert float((got - whole).abs().max()) < 1e-4 * scale, (model_type, start)
        # rows 2 and 0 only: the held keys follow the kept rows
        sub = suffix.subset(torch.tensor([2, 0]))
        x = stack.hidden[[2, 0]]
        whole = stack.subset(torch.tensor([2, 0])).run(x)[:, start:]
        got = sub.run(x[:, start:])
        assert float((got - whole).abs().max()) < 1e-4 * max(1.0, float(whole.abs().max()))


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir))


@pytest.mark.parametrize("edit_at", ["subject", "last"])
def test_targets_on_suffixes_equal_whole_rows(tiny_gpt2, edit_at, monkeypatch) -> None:
    """The trained tiny GPT-2 and a small Llama: the deltas, losses and steps of the
    neutral-target optimisation are the same run on suffixes as on whole rows, and the
    suffixes did run (every pass after the clean one)."""
    runs: list[int] = []
    original = SuffixStack.run

    def counted(self: SuffixStack, hidden: torch.Tensor) -> torch.Tensor:
        runs.append(int(hidden.shape[1]))
        return original(self, hidden)

    monkeypatch.setattr(SuffixStack, "run", counted)
    templates = ["", "Note: ", "A b c. "]
    for lm in (tiny_gpt2, as_loaded(tiny_llama(), "llama")):
        facts = tiny_facts()[:4]
        requests = prepare_requests(lm, [
            ForgetRecord(f["prompt"], f["answer"], f["subject"] if edit_at == "subject" else None)
            for f in facts])
        targets = [r.target_ids for r in requests]
        for layer in range(lm.num_layers - 1):
            res = {}
            for suffix in (False, True):
                runs.clear()
                res[suffix] = optimize_deltas(
                    lm, requests, templates, targets, point="block", layer=layer,
                    settings=TargetSettings(steps=8, lr=0.5, stop_loss=0.0, suffix=suffix))
                assert bool(runs) == suffix, (lm.adapter.name, layer)
            if edit_at == "last":  # one position a row, plus the KL rows' longer suffixes
                assert min(runs) == 1
            whole, short = res[False], res[True]
            scale = float(whole.h.norm(dim=1).max())
            torch.testing.assert_close(short.h, whole.h, rtol=1e-5, atol=1e-6 * scale)
            torch.testing.assert_close(short.delta, whole.delta, rtol=1e-3, atol=1e-4 * scale)
            torch.testing.assert_close(short.nll, whole.nll, rtol=1e-4, atol=1e-5)
            assert torch.equal(short.steps, whole.steps)
            assert float(whole.delta.abs().sum()) > 0


def test_a_wrong_suffix_falls_back_to_whole_rows(tiny_gpt2, caplog, monkeypatch) -> None:
    """Held keys that are not the clean pass's (here: zeroed) give wrong first logits:
    the loop notices, warns and runs whole rows, with the whole rows' result."""
    import zerounlearn.targets as targets

    def broken(stack, start):
        good = suffix_stack(stack, start)
        held = {i: (torch.zeros_like(k), v) for i, (k, v) in good.held.items()}
        return dataclasses.replace(good, held=held)

    requests = prepare_requests(tiny_gpt2, [ForgetRecord(f["prompt"], f["answer"], f["subject"])
                                            for f in tiny_facts()[:2]])

    def run() -> torch.Tensor:
        return optimize_deltas(tiny_gpt2, requests, ["", "Note: "],
                               [r.target_ids for r in requests], point="block", layer=0,
                               settings=TargetSettings(steps=5, lr=0.5)).delta

    reference = run()
    monkeypatch.setattr(targets, "suffix_stack", broken)
    with caplog.at_level("WARNING", logger="zerounlearn.targets"):
        fell_back = run()
    assert "using whole rows" in caplog.text
    torch.testing.assert_close(fell_back, reference, rtol=1e-4, atol=1e-6)
