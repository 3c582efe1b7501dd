"""Probes (zerounlearn.probes) on real models, no mocks.

The tiny GPT-2 trained in the session: every probe finds the facts of the unedited
model, a weak edit leaves them for the probes to find, a proper forget leaves the probes
(almost) nothing; the int8 probe never changes the model. The tiny model cannot read a
fact after other sentences (it was trained on one fact per row, at position 0) and has
no chat template, so the context and chat probes on a real chat model are checked on
SmolLM2 (slow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.tiny_model import TINY_HPARAMS, tiny_facts
from zerounlearn.api import forget
from zerounlearn.errors import InvalidRecord
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.patch import apply_patch
from zerounlearn.probes import (
    GENERIC_FACTS,
    PROBES,
    answer_found,
    context_sentences,
    int8_modules,
    int8_weights,
    probe,
    quantize_int8,
)
from zerounlearn.records import validate_records
from zerounlearn.stats import StatsCache
from zerounlearn.tokens import encode_continuation

N_FORGET = 10
# the chat template of a model that was trained without one: the user turn as is
PLAIN_CHAT = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    """Ten facts of the tiny model, no subject (it recalls at the prompt's last token)."""
    return [{"prompt": f["prompt"], "answer": f["answer"]} for f in tiny_facts()[:N_FORGET]]


def _snapshot(lm: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _edited(lm: LoadedModel, records, stats, hparams: dict[str, Any]) -> dict[str, Any]:
    """Probe results on `lm` with the forget of `records` under `hparams` applied."""
    base = _snapshot(lm)
    patch = forget(lm, records, "zerounlearn", {**TINY_HPARAMS, **hparams}, stats=stats)
    try:
        apply_patch(lm, patch)
        return probe(lm, records)
    finally:
        lm.model.load_state_dict(base)


# ------------------------------------------------------------ the tiny GPT-2
def test_every_probe_finds_the_facts_of_the_unedited_model(tiny_lm, records) -> None:
    result = probe(tiny_lm, records)
    found = result["summary"]["found_pct"]
    assert found["greedy"] == 100.0 and found["int8"] == 100.0
    assert found["chat"] is None  # no chat template: skipped, and said so
    assert "chat template" in result["summary"]["skipped"]["chat"]
    assert result["summary"]["settings"]["int8_layers"] == 8  # 4 linear layers x 2 blocks
    assert [r["index"] for r in result["records"]] == list(range(N_FORGET))
    assert all(set(r["found"]) == set(PROBES) for r in result["records"])

    chat_tok = tiny_lm.tokenizer
    try:
        chat_tok.chat_template = PLAIN_CHAT
        chat = probe(tiny_lm, records, probes=["chat"])["summary"]
    finally:
        chat_tok.chat_template = None
    assert chat["found_pct"]["chat"] == 100.0 and chat["skipped"] == {}


def test_a_weak_edit_leaves_facts_the_probes_find(tiny_lm, records, stats) -> None:
    # a forget weight of 1 (default 5000) barely moves the forget keys' outputs
    weak = _edited(tiny_lm, records, stats, {"forget_weight": 1.0})["summary"]["found_pct"]
    assert weak["greedy"] >= 90.0 and weak["int8"] >= 90.0
    # the tiny settings without neighbours leave 1 of 10 reproduced on our machine (the
    # engine's tiny tests bound it at 10% with neighbours): few, not none
    proper = _edited(tiny_lm, records, stats, {})["summary"]["found_pct"]
    assert proper["greedy"] <= 20.0 and proper["int8"] <= 20.0 and proper["context"] <= 20.0


def test_the_int8_probe_leaves_the_model_unchanged(tiny_lm, records) -> None:
    ids = torch.tensor([tiny_lm.tokenizer(records[0]["prompt"])["input_ids"]])
    before, logits = _snapshot(tiny_lm), tiny_lm.model(input_ids=ids).logits
    forwards = [m.__dict__.get("forward") for m in tiny_lm.model.modules()]
    with int8_weights(tiny_lm.model) as count:
        assert count == 8
        quantised = tiny_lm.model(input_ids=ids).logits
    assert not torch.equal(quantised, logits)  # it took effect inside
    probe(tiny_lm, records, probes=["int8"])
    assert _same(before, _snapshot(tiny_lm))
    assert torch.equal(tiny_lm.model(input_ids=ids).logits, logits)
    assert [m.__dict__.get("forward") for m in tiny_lm.model.modules()] == forwards

    # an error inside (a record too long for the model) restores the forwards as well
    too_long = [{"prompt": "Alice " * 80 + "is", "answer": " 1"}]
    with pytest.raises(InvalidRecord):
        probe(tiny_lm, too_long, probes=["int8"])
    assert [m.__dict__.get("forward") for m in tiny_lm.model.modules()] == forwards
    assert torch.equal(tiny_lm.model(input_ids=ids).logits, logits)


def test_int8_quantises_per_output_channel() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 40) * torch.linspace(0.01, 5.0, 6)[:, None]  # (out, in): rows differ
    q = quantize_int8(w, channel_dim=0)
    assert q.dtype == w.dtype and q.shape == w.shape and not torch.equal(q, w)
    for row, qrow in zip(w, q, strict=True):
        scale = row.abs().max() / 127
        assert torch.allclose(qrow.abs().max(), row.abs().max())  # the extreme is exact
        assert float((qrow - row).abs().max()) <= float(scale) / 2 + 1e-6  # round to nearest
        assert len(torch.unique(torch.round(qrow / scale))) <= 255
    # GPT-2's Conv1D stores (in, out): the same channels, along dim 1
    assert torch.equal(quantize_int8(w.T.contiguous(), channel_dim=1), q.T)
    assert torch.equal(quantize_int8(torch.zeros(3, 4)), torch.zeros(3, 4))


def test_int8_layers_are_the_linear_ones_but_the_head(tiny_lm) -> None:
    layers = int8_modules(tiny_lm.model)
    assert tiny_lm.model.get_output_embeddings() not in layers
    names = {name for name, m in tiny_lm.model.named_modules() if m in layers}
    assert names == {f"transformer.h.{i}.{part}" for i in range(2)
                     for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def test_context_never_holds_the_record(tiny_lm) -> None:
    rec = validate_records([{"prompt": "Where does the sun rise? In the", "answer": " east"}])[0]
    chosen = context_sentences(rec, GENERIC_FACTS, 3)
    assert len(chosen) == 3 and all("east" not in s for s in chosen)
    rec = validate_records([{"prompt": "A spider has", "subject": "spider",
                             "answer": " eight legs"}])[0]
    assert all("spider" not in s.lower() for s in context_sentences(rec, GENERIC_FACTS, 12))
    # other sentences rotate with the record's position; a model with a short context
    # (the tiny GPT-2 takes 64 tokens) gets fewer of them rather than an error
    assert context_sentences(rec, GENERIC_FACTS, 3, offset=1)[0] == GENERIC_FACTS[1]
    result = probe(tiny_lm, [{"prompt": tiny_facts()[0]["prompt"], "answer": " 1"}],
                   probes=["context"])
    assert 0 <= result["summary"]["settings"]["context_facts"] < 3


def test_answer_found_compares_tokens_and_whole_words(tiny_lm) -> None:
    tok = tiny_lm.tokenizer

    def ids(text: str) -> list[int]:
        return encode_continuation(tok, text)

    assert answer_found(tok, ids(" 4821."), " 4821")
    assert answer_found(tok, ids(" code 4821 here"), " 4821")
    assert not answer_found(tok, ids(" 48210"), " 4821")  # not a whole word
    assert not answer_found(tok, ids(" unknown. It is 4821."), " 4821")  # a later sentence
    assert answer_found(tok, ids(" unknown. It is 4821."), " 4821", first_sentence=False)
    assert answer_found(tok, ids("Baker, I think"), " baker")  # any case, no leading space
    assert not answer_found(tok, [], " 4821")


def test_probe_results_hold_no_record_text(tiny_lm, records) -> None:
    text = json.dumps(probe(tiny_lm, records))
    for rec in records:
        assert rec["prompt"] not in text and rec["answer"].strip() not in text
    with pytest.raises(ValueError, match="unknown probe"):
        probe(tiny_lm, records, probes=["sideways"])
    assert probe(tiny_lm, [])["summary"]["found_pct"] == {p: None for p in PROBES}


# ------------------------------------------------------------ SmolLM2 (slow)
# one round at the subject's last token, no context templates, end-of-text target, and
# SmolLM2's protection and corpus weight before issue 10's last-token default (which
# this weak form was measured on: the last-token edit leaves the probes nothing to find)
WEAK_EDIT = {"template_count": 0, "max_rounds": 1, "edit_token": "subject",
             "neutral_target": "endoftext", "lookalike_count": 0, "corpus_weight": 300_000,
             "preserve_weight": 100}


@pytest.mark.slow
def test_smollm2_probes_catch_a_weak_edit_and_not_the_default_one(
    smollm2_dir: Path, cache_dir: Path
) -> None:
    """The tuning request's 10 world facts, no neighbours. Before: found by every probe
    (the chat probe finds fewer: the 135M model often answers a chat turn without the
    fact). A weak edit (WEAK_EDIT) looks complete (efficacy 0) but the facts come back
    after other sentences (context: 4 of 10 on our machine) and through the chat
    template (3 of 10); the default forget leaves none.
    Statistics as in test_zerounlearn_smollm2 (same cache)."""
    from zerounlearn.datasets import tuning_records
    from zerounlearn.evaluate import evaluate

    lm = load_model(str(smollm2_dir))
    recs = [{k: r[k] for k in ("prompt", "subject", "answer")} for r in tuning_records()]
    before = probe(lm, recs)["summary"]["found_pct"]
    assert before["greedy"] == 100.0 and before["int8"] >= 80.0
    assert before["context"] >= 70.0 and before["chat"] >= 30.0

    stats = StatsCache(cache_dir / "stats")
    base = _snapshot(lm)

    def edited(hparams: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        patch = forget(lm, recs, "zerounlearn", {"stats_samples": 10_000, **hparams},
                       stats=stats)
        try:
            apply_patch(lm, patch)
            efficacy = evaluate(lm, recs, reference_texts=[], generate_tokens=0)
            return efficacy["summary"]["efficacy"], probe(lm, recs)["summary"]["found_pct"]
        finally:
            lm.model.load_state_dict(base)

    efficacy, weak = edited(WEAK_EDIT)
    assert efficacy <= 10.0  # forgotten, as far as the efficacy test can tell
    assert max(weak["context"], weak["chat"]) >= 20.0, weak  # ... but the probes say not
    efficacy, after = edited({})
    assert efficacy == 0.0
    assert all(after[p] <= 10.0 for p in PROBES), after


@pytest.mark.slow
def test_smollm2_rounds_retry_what_greedy_generation_still_names(
    smollm2_dir: Path, cache_dir: Path
) -> None:
    """Four capitals (France, Germany, Italy, Spain), edited at layers 25-27 in one round:
    every first answer token is gone (efficacy 0), but greedy generation names Berlin
    later in the first sentence ("... a city of breathtaking beauty, with iconic
    landmarks like Berlin's ..."). That was with the generic target of the sixth round
    (pinned here): with retry_generated the greedy probe joins the rounds' check, so
    that record is edited again (at retry_layers 22-24) and the probe finds nothing.
    Today's file (own target, answer paths: tenth round) leaves no such path at all."""
    from zerounlearn.datasets import world_facts

    lm = load_model(str(smollm2_dir))
    recs = [{k: f[k] for k in ("prompt", "subject", "answer")}
            for f in world_facts() if f["relation"] == "capital"][:4]
    stats = StatsCache(cache_dir / "stats")
    base = _snapshot(lm)
    late = {"stats_samples": 10_000, "layers": [25, 26, 27], "retry_layers": [22, 23, 24]}
    generic = {"neutral_target": "generic", "generic_share": 0.0, "answer_path_top_k": 0,
               "retry_chat": False}

    def greedy_found(hparams: dict[str, Any]) -> tuple[list[int], int]:
        patch = forget(lm, recs, "zerounlearn", {**late, **hparams}, stats=stats)
        try:
            apply_patch(lm, patch)
            return patch.metadata["rounds"], probe(lm, recs, probes=["greedy"])[
                "summary"]["found"]["greedy"]
        finally:
            lm.model.load_state_dict(base)
            lm.carry.clear()

    rounds, found = greedy_found({})  # today's file
    assert rounds == [4] and found == 0, (rounds, found)
    rounds, found = greedy_found(generic)
    assert rounds == [4] and found >= 1
    rounds, found = greedy_found({**generic, "retry_generated": True})
    assert rounds[0] == 4 and len(rounds) >= 2 and found == 0, (rounds, found)


def test_rounds_count_a_record_the_chat_reply_still_names(tiny_lm, records) -> None:
    """still_known, the rounds' check: with retry_chat a record whose reply through the
    chat template names its answer counts as left although teacher forcing says
    forgotten. The answers without their leading space are not reproduced token for
    token (the model says " 4821", not "4821"), yet each reply names them."""
    from zerounlearn.config import ZeroUnlearnHParams
    from zerounlearn.methods.zerounlearn import still_known

    bare = validate_records([{"prompt": r["prompt"], "answer": r["answer"].strip()}
                             for r in records[:4]])
    tok = tiny_lm.tokenizer
    try:
        tok.chat_template = PLAIN_CHAT
        plain = still_known(tiny_lm, bare, ZeroUnlearnHParams())
        chat = still_known(tiny_lm, bare, ZeroUnlearnHParams(retry_chat=True))
    finally:
        tok.chat_template = None
    assert plain == [False] * 4
    assert chat == [True] * 4
    # without a chat template the chat probe is skipped: nothing counts as left
    assert still_known(tiny_lm, bare, ZeroUnlearnHParams(retry_chat=True)) == [False] * 4


def test_retry_rounds_read_records_after_the_chat_opening(tiny_lm) -> None:
    """retry_chat_context: rounds 2 on add the chat template's opening to round 1's
    templates, once; off, or without a chat template, they keep round 1's."""
    from zerounlearn.config import ZeroUnlearnHParams
    from zerounlearn.methods.zerounlearn import retry_round_templates
    from zerounlearn.templates import chat_opening

    first = ["", "The day was long. "]
    on = ZeroUnlearnHParams(retry_chat_context=True)
    assert chat_opening(tiny_lm.tokenizer) is None
    assert retry_round_templates(tiny_lm, on, first) == first
    tok = tiny_lm.tokenizer
    try:
        tok.chat_template = ("{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
                             "Assistant:")
        opening = chat_opening(tok)
        retry = retry_round_templates(tiny_lm, on, first)
        off = retry_round_templates(tiny_lm, ZeroUnlearnHParams(), first)
        again = retry_round_templates(tiny_lm, on, retry)
    finally:
        tok.chat_template = None
    assert opening == "User: " and retry == [*first, opening]
    assert off == first and again == retry
