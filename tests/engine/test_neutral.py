"""The "generic" neutral target on the tiny GPT-2 trained in the session: the forgotten
prompt goes on with what the model says of a generic subject, not with end-of-text."""

from __future__ import annotations

import torch

from tests.support.tiny_model import TINY_HPARAMS, tiny_facts
from zerounlearn.api import forget
from zerounlearn.evaluate import greedy_continuations, reproduced
from zerounlearn.keys import prepare_requests
from zerounlearn.loading import LoadedModel
from zerounlearn.neutral import generic_distributions, generic_text
from zerounlearn.patch import apply_patch
from zerounlearn.records import validate_records
from zerounlearn.stats import StatsCache


def _records(n: int = 3) -> list[dict[str, str]]:
    facts = [f for f in tiny_facts() if f["relation"] == "city"][:n]
    return [{"prompt": f["prompt"], "answer": f["answer"], "subject": f["subject"]}
            for f in facts]


def test_generic_distributions_put_no_mass_on_the_answer(tiny_lm: LoadedModel) -> None:
    requests = prepare_requests(tiny_lm, validate_records(_records()), "generic")
    assert generic_text(requests[0]).startswith("the thing")  # "{s} lives in the city of"
    dists = generic_distributions(tiny_lm, requests)  # (n, V)
    assert torch.allclose(dists.sum(dim=-1), torch.ones(len(requests)), atol=1e-5)
    for req, row in zip(requests, dists, strict=True):
        assert row[req.answer_ids[0]] == 0.0


def test_forgetting_with_the_generic_target_does_not_end_the_text(
    tiny_lm: LoadedModel, stats: StatsCache
) -> None:
    records = [{k: v for k, v in r.items() if k != "subject"} for r in _records()]

    base = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    try:
        patch = forget(tiny_lm, records, "zerounlearn", {**TINY_HPARAMS,
                                                     "neutral_target": "generic"}, stats=stats)
        apply_patch(tiny_lm, patch)
        assert not any(reproduced(tiny_lm, records))
        eos = tiny_lm.tokenizer.eos_token_id
        firsts = [g[0] for g in greedy_continuations(tiny_lm, [r["prompt"] for r in records], 1)]
        answers = [tiny_lm.tokenizer(r["answer"])["input_ids"][0] for r in records]
        assert all(t != eos for t in firsts), "the generic target is not end-of-text"
        assert all(t != a for t, a in zip(firsts, answers, strict=True))
    finally:
        tiny_lm.model.load_state_dict(base)
        tiny_lm.carry.clear()


def test_the_own_target_is_the_prompts_distribution_without_the_answer(
    tiny_lm: LoadedModel,
) -> None:
    """neutral_target "own": the prompt's next-token distribution itself, the answer's
    first token removed and the rest renormalised (every other ratio unchanged)."""
    requests = prepare_requests(tiny_lm, validate_records(_records()), "own")
    own = generic_distributions(tiny_lm, requests, None)  # (n, V)
    generic = generic_distributions(tiny_lm, requests)
    assert not torch.allclose(own, generic)
    for req, row in zip(requests, own, strict=True):
        ids = torch.tensor([tiny_lm.tokenizer(req.prompt)["input_ids"]])
        with torch.no_grad():
            clean = tiny_lm.model(ids).logits[0, -1].float().softmax(-1)
        answer = req.answer_ids[0]
        assert row[answer] == 0.0
        clean[answer] = 0.0
        torch.testing.assert_close(row, clean / clean.sum(), rtol=1e-4, atol=1e-6)


def test_forgetting_with_the_own_target_forgets(tiny_lm: LoadedModel, stats: StatsCache
                                                ) -> None:
    records = _records()
    base = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    try:
        patch = forget(tiny_lm, records, "zerounlearn", {**TINY_HPARAMS,
                                                     "neutral_target": "own"}, stats=stats)
        apply_patch(tiny_lm, patch)
        assert not any(reproduced(tiny_lm, records))
        assert patch.hparams["neutral_target"] == "own"
    finally:
        tiny_lm.model.load_state_dict(base)
        tiny_lm.carry.clear()


def _known_requests(lm: LoadedModel, n: int) -> tuple[list, torch.Tensor]:
    """n city records the tiny model knows, as "own" requests, and (n, V) zero targets."""
    records = [r for r in _records(6) if reproduced(lm, [r])][:n]
    requests = prepare_requests(lm, validate_records(records), "own")
    return requests, torch.zeros(len(requests),
                                 lm.model.get_output_embeddings().weight.shape[0])


def _next_top(lm: LoadedModel, prompt: str, k: int) -> list[int]:
    """The model's k most likely next tokens after `prompt`."""
    ids = torch.tensor([lm.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        return lm.model(ids).logits[0, -1].topk(k).indices.tolist()


def test_answer_paths_are_dropped_from_a_target(tiny_lm: LoadedModel) -> None:
    """A target that still puts mass on the answer's first token: the greedy sentence
    after that token names the answer, so drop_answer_paths takes its mass away; tokens
    whose sentences do not name it keep theirs."""
    from zerounlearn.neutral import drop_answer_paths
    from zerounlearn.probes import answer_found, greedy_ids

    requests, dists = _known_requests(tiny_lm, 3)
    for b, req in enumerate(requests):
        top = _next_top(tiny_lm, req.prompt, 6)
        assert req.answer_ids[0] in top  # a known fact: its answer leads
        dists[b, top] = 1.0 / len(top)
    kept = drop_answer_paths(tiny_lm, requests, dists, top_k=6)
    assert torch.allclose(kept.sum(-1), torch.ones(len(requests)))
    for b, req in enumerate(requests):
        assert kept[b, req.answer_ids[0]] == 0.0
        answer = tiny_lm.tokenizer.decode(req.answer_ids)
        prompt = tiny_lm.tokenizer(req.prompt)["input_ids"]
        for t in dists[b].nonzero().squeeze(1).tolist():
            gen = greedy_ids(tiny_lm, [prompt + [t]], 16, first_sentence=True)[0]
            names = answer_found(tiny_lm.tokenizer, [t, *gen], answer)
            assert (kept[b, t] == 0) == names, (b, t)
    assert (kept > 0).sum() > len(requests)  # not everything went


def test_answer_paths_skip_tokens_below_min_mass(tiny_lm: LoadedModel) -> None:
    """min_mass: only tokens with at least that share of the target are followed. The
    answer's own token (half the mass here) is followed and dropped; the five light
    tokens keep their mass whatever their sentences say, renormalised."""
    from zerounlearn.neutral import drop_answer_paths

    requests, dists = _known_requests(tiny_lm, 2)
    for b, req in enumerate(requests):
        top = _next_top(tiny_lm, req.prompt, 6)
        light = [t for t in top if t != req.answer_ids[0]][:5]
        dists[b, light] = 0.1
        dists[b, req.answer_ids[0]] = 0.5
    kept = drop_answer_paths(tiny_lm, requests, dists, top_k=6, min_mass=0.2)
    for b, req in enumerate(requests):
        assert kept[b, req.answer_ids[0]] == 0.0
        light = dists[b].clone()
        light[req.answer_ids[0]] = 0.0
        assert torch.allclose(kept[b], light / light.sum())
    untouched = drop_answer_paths(tiny_lm, requests, dists, top_k=6, min_mass=0.6)
    assert torch.equal(untouched, dists / dists.sum(-1, keepdim=True))
