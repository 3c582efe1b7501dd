"""Anchors of the target optimisation (targets.py): prompts whose next-token distribution
a record's delta should not move. On the tiny GPT-2 trained in the session, a delta
optimised with its record's lookalikes as anchors still reaches its target and moves the
anchors' predictions less than one optimised without them; and anchors keep the
optimisation independent of how the rows are chunked."""

from __future__ import annotations

import torch

from tests.support.tiny_model import known_facts
from zerounlearn.adapters import block_hidden, replace_block_hidden
from zerounlearn.keys import prepare_requests
from zerounlearn.loading import LoadedModel
from zerounlearn.records import ForgetRecord
from zerounlearn.targets import TargetSettings, _hook_module, optimize_deltas

TEMPLATES = ["", "Note: "]
LAYER = 1  # the tiny GPT-2's last block: the targets' hook point in a default edit


def _forget_and_anchors(lm: LoadedModel, n: int = 3, per_record: int = 3):
    """n known secret codes, edited at the last token, each with per_record other known
    people's secret-code prompts as anchors (same relation, another subject)."""
    facts = [f for f in known_facts(lm) if f["relation"] == "secret_code"]
    forget, others = facts[:n], facts[n:]
    requests = prepare_requests(lm, [ForgetRecord(f["prompt"], f["answer"]) for f in forget])
    anchors = [[(o["prompt"], None) for o in others[b * per_record:(b + 1) * per_record]]
               for b in range(n)]
    return requests, anchors


def _optimize(lm, requests, anchors, weight: float, budget: int | None = None,
              stop_loss: float = 0.0):
    return optimize_deltas(
        lm, requests, TEMPLATES, [r.target_ids for r in requests], point="block",
        layer=LAYER, settings=TargetSettings(steps=12, lr=0.3, stop_loss=stop_loss,
                                             kl_weight=0.0),
        anchors=anchors, anchor_weight=weight, max_tokens=budget)


@torch.no_grad()
def _anchor_kl(lm: LoadedModel, text: str, delta: torch.Tensor, skip: int) -> float:
    """KL(p_shifted || p_clean) at the last token of text, delta added to block LAYER's
    output at that token, both without token `skip` (the record's first answer token,
    which an anchor does not hold up)."""
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])

    def logp(logits: torch.Tensor) -> torch.Tensor:
        kept = torch.ones_like(logits, dtype=torch.bool)
        kept[skip] = False
        return torch.log_softmax(logits[kept].float(), -1)

    clean = logp(lm.model(ids).logits[0, -1])

    def shift(_m, _a, output):
        hidden = block_hidden(output).clone()
        hidden[0, -1] += delta.to(hidden.dtype)
        return replace_block_hidden(output, hidden)

    handle = _hook_module(lm, "block", LAYER).register_forward_hook(shift)
    try:
        new = logp(lm.model(ids).logits[0, -1])
    finally:
        handle.remove()
    return float((new.exp() * (new - clean)).sum())


def test_anchors_keep_their_predictions_and_the_target_is_still_reached(tiny_lm) -> None:
    requests, anchors = _forget_and_anchors(tiny_lm)
    plain = _optimize(tiny_lm, requests, anchors, 0.0)
    held = _optimize(tiny_lm, requests, anchors, 2.0)
    without = _optimize(tiny_lm, requests, None, 0.0)
    assert torch.equal(plain.delta, without.delta)  # weight 0: anchors play no part
    kl_plain = [_anchor_kl(tiny_lm, t, plain.delta[b], requests[b].answer_ids[0])
                for b, own in enumerate(anchors) for t, _ in own]
    kl_held = [_anchor_kl(tiny_lm, t, held.delta[b], requests[b].answer_ids[0])
               for b, own in enumerate(anchors) for t, _ in own]
    assert sum(kl_plain) > 0.05, kl_plain  # an unanchored shift does move them
    assert sum(kl_held) < 0.35 * sum(kl_plain), (kl_held, kl_plain)
    # still aimed at the target: the end-of-text token's NLL falls far below where the
    # clean prompt has it (the first pass of a 1-step run)
    first = optimize_deltas(
        tiny_lm, requests, TEMPLATES, [r.target_ids for r in requests], point="block",
        layer=LAYER, settings=TargetSettings(steps=1, stop_loss=0.0, kl_weight=0.0))
    assert (held.nll < 0.5 * first.nll).all(), (held.nll, first.nll)


def test_anchors_do_not_depend_on_the_chunking(tiny_lm) -> None:
    requests, anchors = _forget_and_anchors(tiny_lm, n=4, per_record=2)
    ref = _optimize(tiny_lm, requests, anchors, 5.0, budget=10**9)
    for budget in (1, 40):
        got = _optimize(tiny_lm, requests, anchors, 5.0, budget=budget)
        scale = float(ref.h.norm(dim=1).max())
        torch.testing.assert_close(got.delta, ref.delta, rtol=1e-4, atol=1e-5 * scale)
        assert torch.equal(got.steps, ref.steps)
    # records leaving the batch take their anchor rows with them: stop half of them at
    # the first pass (a stop loss between the records' clean losses)
    first = optimize_deltas(
        tiny_lm, requests, TEMPLATES, [r.target_ids for r in requests], point="block",
        layer=LAYER, settings=TargetSettings(steps=1, stop_loss=0.0, kl_weight=0.0))
    clean = sorted(first.nll.tolist())
    cut = (clean[1] + clean[2]) / 2
    assert clean[2] - clean[1] > 1e-3, clean
    ref = _optimize(tiny_lm, requests, anchors, 5.0, budget=10**9, stop_loss=cut)
    assert 0 in ref.steps.tolist() and int(ref.steps.max()) > 0, ref.steps
    got = _optimize(tiny_lm, requests, anchors, 5.0, budget=1, stop_loss=cut)
    torch.testing.assert_close(got.delta, ref.delta, rtol=1e-4, atol=1e-5 * scale)
