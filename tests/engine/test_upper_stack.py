"""Upper blocks only (upper.py): the recorded stack gives the model's own logits, for
every supported family, and the target optimisation / key readings that use it agree
with full forward passes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tests.engine.random_models import VOCAB, as_loaded
from tests.support.tiny_model import TINY_HPARAMS, tiny_facts
from zerounlearn.adapters import SUPPORTED_ARCHITECTURES
from zerounlearn.api import forget
from zerounlearn.keys import (
    ProtectedPrefix,
    Site,
    compute_keys,
    key_prefix,
    prepare_requests,
)
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.records import ForgetRecord
from zerounlearn.stats import StatsCache
from zerounlearn.targets import TargetSettings, optimize_deltas
from zerounlearn.upper import capture_stack

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, head_dim=8,
             pad_token_id=0, bos_token_id=0, eos_token_id=0)
EXTRA: dict[str, dict] = {
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32),
    "gpt2": dict(n_inner=64),
    "gemma2": dict(sliding_window=4),  # layers alternate sliding / full attention masks
    "gemma3_text": dict(sliding_window=4),
    "qwen2": dict(sliding_window=4, use_sliding_window=True, max_window_layers=1),
    "phi": dict(partial_rotary_factor=0.5),
    "gpt_neox": dict(rotary_pct=0.5),
}
# OPT-350m's shape: post-norm blocks, no final norm, a projection before the head
OPT_POST_NORM = dict(ffn_dim=64, word_embed_proj_dim=16, do_layer_norm_before=False)
FAMILIES = [(mt, EXTRA.get(mt, {})) for mt in SUPPORTED_ARCHITECTURES] + [
    ("opt", OPT_POST_NORM)]


def random_model(model_type: str, extra: dict) -> torch.nn.Module:
    config = AutoConfig.for_model(model_type, **SMALL, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


def tiny_llama(layers: int = 3) -> torch.nn.Module:
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                         max_position_embeddings=64, pad_token_id=0, bos_token_id=0,
                         eos_token_id=0)
    torch.manual_seed(1)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """3 right-padded rows of 9 tokens (lengths 9, 6, 4)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    return ids, mask


def _full_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


@pytest.mark.parametrize(("model_type", "extra"), FAMILIES,
                         ids=[f"{mt}{'-postnorm' if e is OPT_POST_NORM else ''}"
                              for mt, e in FAMILIES])
def test_stack_gives_the_models_logits(model_type: str, extra: dict) -> None:
    model = random_model(model_type, extra)
    lm = as_loaded(model, model_type)
    ids, mask = _batch()
    rows, pos = torch.tensor([0, 0, 1, 2]), torch.tensor([3, 8, 5, 3])
    full = _full_logits(model, ids, mask)  # (3, 9, V)
    shift = torch.zeros(3, 9, 32)
    shift[0, 2], shift[1, 4], shift[2, 1] = (10 * torch.randn(32, generator=torch.Generator()
                                                              .manual_seed(i)) for i in range(3))

    def add_shift(_module, _args, output):
        return output + shift if isinstance(output, torch.Tensor) else (
            output[0] + shift, *output[1:])

    for start in range(3):
        stack, _ = capture_stack(lm, lambda: _full_logits(model, ids, mask), start)
        assert stack.rows == 3 and len(stack.calls) == 3 - start
        got = stack.logits_at(stack.run(stack.hidden), rows, pos)  # (4, V)
        torch.testing.assert_close(got, full[rows, pos].float(), rtol=1e-5, atol=1e-5)
        # rows 2 and 1 only: masks and embeddings follow the kept rows
        sub = stack.subset(torch.tensor([2, 1]))
        got = sub.logits_at(sub.run(sub.hidden), torch.tensor([0, 1]), torch.tensor([3, 5]))
        torch.testing.assert_close(got, full[[2, 1], [3, 5]].float(), rtol=1e-5, atol=1e-5)
        if start == 0:
            continue
        # a delta added to block start-1's output: the stack on (clean + delta) equals
        # the model with the delta hooked in
        handle = lm.adapter.block(model, start - 1).register_forward_hook(add_shift)
        try:
            shifted = _full_logits(model, ids, mask)
        finally:
            handle.remove()
        moved = float((shifted[rows, pos] - full[rows, pos]).abs().max())
        assert moved > 0
        got = stack.logits_at(stack.run(stack.hidden + shift), rows, pos)
        assert float((got - shifted[rows, pos]).abs().max()) < 1e-3 * moved


def test_halted_capture_records_only_what_is_needed() -> None:
    model = tiny_llama(layers=4)
    lm = as_loaded(model, "llama")
    ids, mask = _batch()
    stack, result = capture_stack(lm, lambda: _full_logits(model, ids, mask), 1, 2,
                                  halt=True)
    assert result is None and stack.start == 1 and stack.stop == 2
    out = stack.run(stack.hidden)  # block 2's output
    seen = {}
    handle = lm.adapter.block(model, 2).register_forward_hook(
        lambda _m, _a, o: seen.setdefault("h", o if isinstance(o, torch.Tensor) else o[0]))
    try:
        _full_logits(model, ids, mask)
    finally:
        handle.remove()
    torch.testing.assert_close(out, seen["h"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- target optimisation


def _requests(lm: LoadedModel, facts: list[dict]) -> list:
    return prepare_requests(lm, [ForgetRecord(f["prompt"], f["answer"], f["subject"])
                                 for f in facts])


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir))


def _models(tiny_gpt2: LoadedModel) -> list[LoadedModel]:
    return [tiny_gpt2, as_loaded(tiny_llama(), "llama")]


def _split_loss(lm: LoadedModel, requests: list, templates: list[str]) -> float:
    """A stop loss that splits the records: the middle of the widest gap between their
    clean target NLLs (what the first pass sees, delta = 0), so some stop at once and
    the others go on. Chosen from this model's own numbers, not tuned by hand: the
    weights differ by CPU, and the decision sits half a gap away from rounding."""
    first = optimize_deltas(lm, requests, templates, [r.target_ids for r in requests],
                            point="block", layer=0,
                            settings=TargetSettings(steps=1, stop_loss=0.0, upper_only=False))
    nll = sorted(first.nll.tolist())
    gap, cut = max((b - a, (a + b) / 2) for a, b in zip(nll, nll[1:], strict=False))
    assert gap > 1e-2, nll  # far wider than the 1e-5 the two ways differ by
    return cut


def _assert_same(upper, full) -> None:
    scale = float(full.h.norm(dim=1).max())
    torch.testing.assert_close(upper.h, full.h, rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(upper.delta, full.delta, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(upper.nll, full.nll, rtol=1e-4, atol=1e-5)
    assert torch.equal(upper.steps, full.steps)


@pytest.mark.parametrize("point", ["block", "down_proj"])
def test_optimize_deltas_upper_only_equals_full_forward(tiny_gpt2, point) -> None:
    """The same targets both ways: over 10 steps with every record in the batch, and
    with records leaving it (their rows then leave the recorded stack too). The second
    runs 2 steps: the only stop decision is then the first pass's, made on the clean
    NLLs half a gap from the stop loss, so no rounding can make the two ways differ."""
    templates = ["", "Note: ", "A b c. "]
    for lm in _models(tiny_gpt2):
        requests = _requests(lm, tiny_facts()[:4])
        cut = _split_loss(lm, requests, templates)
        moved = False
        for layer in range(lm.num_layers):
            for steps, stop_loss in ((10, 0.0), (2, cut)):  # 0.0: an NLL never falls below
                res = {up: optimize_deltas(
                    lm, requests, templates, [r.target_ids for r in requests], point=point,
                    layer=layer, settings=TargetSettings(steps=steps, lr=0.5,
                                                         stop_loss=stop_loss, upper_only=up))
                    for up in (False, True)}
                full, upper = res[False], res[True]
                _assert_same(upper, full)
                moved |= bool(full.delta.abs().sum() > 0)
                if stop_loss == cut:  # some records stopped at once, the others stepped
                    assert set(full.steps.tolist()) == {0, 1}, full.steps
        assert moved, lm.adapter.name


def test_upper_only_batched_equals_one_at_a_time(tiny_gpt2) -> None:
    lm = as_loaded(tiny_llama(), "llama")
    requests = _requests(lm, tiny_facts()[:4])

    def run(batch_records: bool):
        return optimize_deltas(lm, requests, ["", "Note: "], [r.target_ids for r in requests],
                               point="block", layer=1,
                               settings=TargetSettings(steps=8, lr=0.5, stop_loss=3.0,
                                                       batch_records=batch_records))
    batched, single = run(True), run(False)
    scale = float(batched.h.norm(dim=1).max())
    torch.testing.assert_close(batched.delta, single.delta, rtol=1e-3, atol=1e-3 * scale)
    assert torch.equal(batched.steps, single.steps)
    assert batched.delta.abs().sum() > 0


def test_a_wrong_stack_falls_back_to_full_forward(tiny_gpt2, caplog) -> None:
    """An adapter that names no final norm for GPT-2 (its path does not exist there)
    gives wrong upper logits: the first pass notices and the loop runs full forwards."""
    lm = dataclasses.replace(tiny_gpt2, adapter=dataclasses.replace(
        tiny_gpt2.adapter, name="unknown-family"))
    assert lm.adapter.final_modules(lm.model) == []
    requests = _requests(lm, tiny_facts()[:2])

    def run(lm: LoadedModel, upper_only: bool):
        return optimize_deltas(lm, requests, [""], [r.target_ids for r in requests],
                               point="block", layer=0,
                               settings=TargetSettings(steps=5, lr=0.5, upper_only=upper_only))
    with caplog.at_level("WARNING", logger="zerounlearn.targets"):
        fell_back = run(lm, True)
    assert "using full forward passes" in caplog.text
    reference = run(tiny_gpt2, False)
    torch.testing.assert_close(fell_back.delta, reference.delta, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- keys


def test_key_prefix_equals_full_forward_after_an_edit(tiny_gpt2) -> None:
    lm = as_loaded(tiny_llama(layers=4), "llama")
    requests = _requests(lm, tiny_facts()[:3])
    templates = ["", "Note: "]
    protected = [Site("The city of Ostmark is", (1, 3, 4)), Site("Water is", (0, 1))]
    prefix = key_prefix(lm, requests, templates, 1, 3, protected)
    original = lm.adapter.get_weight(lm.model, 1)
    try:
        for layer in (1, 2, 3):
            if layer == 2:  # an edit of the first layer, as the layer loop makes
                lm.adapter.set_weight(lm.model, 1, original * 1.5)
            fast = compute_keys(lm, requests, templates, layer, 3, protected, prefix)
            slow = compute_keys(lm, requests, templates, layer, 3, protected)
            for name in ("k_f", "k_clean", "wk_f", "h_l", "k_p"):
                a, b = getattr(fast, name), getattr(slow, name)
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    finally:
        lm.adapter.set_weight(lm.model, 1, original)


def test_a_first_rounds_prefix_serves_a_later_round(tiny_gpt2) -> None:
    """Later rounds read the protected sites through the first round's prefix
    (keys.ProtectedPrefix): after edits at and above its first block, with another set
    of records (those the first round left), the keys equal a full forward's."""
    lm = as_loaded(tiny_llama(layers=4), "llama")
    first = _requests(lm, tiny_facts()[:3])
    templates = ["", "Note: "]
    protected = [Site("The city of Ostmark is", (1, 3, 4)), Site("Water is", (0, 1))]
    kept = ProtectedPrefix(key_prefix(lm, first, templates, 1, 3, protected),
                           len(first) * len(templates))
    later = first[1:2]  # the record a first round left
    originals = {layer: lm.adapter.get_weight(lm.model, layer) for layer in (1, 2)}
    try:
        for layer, w in originals.items():  # the first round's edits
            lm.adapter.set_weight(lm.model, layer, w * 1.5)
        assert kept.serves(1, 3, lowest_edit=1)
        own = key_prefix(lm, later, templates, 1, 3)
        for layer in (1, 2, 3):
            fast = compute_keys(lm, later, templates, layer, 3, protected, own, kept)
            slow = compute_keys(lm, later, templates, layer, 3, protected)
            for name in ("k_f", "k_clean", "wk_f", "h_l", "k_p"):
                a, b = getattr(fast, name), getattr(slow, name)
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    finally:
        for layer, w in originals.items():
            lm.adapter.set_weight(lm.model, layer, w)
    assert not kept.serves(1, 3, lowest_edit=0)  # a block below it changed
    assert not kept.serves(2, 3, lowest_edit=2)  # another round's layers


# ---------------------------------------------------------------- end to end


def test_forget_upper_only_matches_the_reference_way(tiny_gpt2, cache_dir: Path) -> None:
    stats = StatsCache(cache_dir / "tiny-stats")
    facts = tiny_facts()
    records = [{"prompt": f["prompt"], "answer": f["answer"],
                "neighbors": [{"prompt": n["prompt"], "answer": n["answer"]}
                              for n in facts[10 + i :: 40][:2]]}
               for i, f in enumerate(facts[:6])]
    hp = {**TINY_HPARAMS, "layers": [0, 1], "template_count": 2}
    fast = forget(tiny_gpt2, records, "zerounlearn", {**hp, "upper_only": True}, stats=stats)
    slow = forget(tiny_gpt2, records, "zerounlearn", {**hp, "upper_only": False}, stats=stats)
    assert fast.metadata["keys_prefix_seconds"] >= 0
    assert "keys_prefix_seconds" not in slow.metadata
    assert fast.metadata["target_steps"] == slow.metadata["target_steps"]
    for layer in (0, 1):
        w_fast, w_slow = fast.weights[layer], slow.weights[layer]
        base = tiny_gpt2.adapter.get_weight(tiny_gpt2.model, layer)
        assert not torch.equal(w_slow, base)
        # the edits agree to float rounding: far closer than their size
        assert float((w_fast - w_slow).norm()) < 1e-3 * float((w_slow - base).norm())
