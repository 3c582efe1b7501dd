"""Sites batched by length (site_chunks.py): chunks cover every site once, stay within
their padded budget, and the key readings made chunk by chunk (with and without a key
prefix, and the retain bank's) equal those of one batch, column for column."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.engine.random_models import VOCAB, as_loaded
from tests.support.tiny_model import tiny_facts
from zerounlearn import site_chunks as chunking
from zerounlearn.keys import Site, capture, compute_keys, key_prefix, prepare_requests
from zerounlearn.loading import LoadedModel
from zerounlearn.records import ForgetRecord
from zerounlearn.retain import keys_at

SMALL = dict(hidden_size=32, intermediate_size=64, ffn_dim=64, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
             max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0,
             bos_token_id=0, eos_token_id=0)
# sites of many lengths, several readings each, given out of length order
SITES = [
    Site("The capital of France is Paris and more words follow here.", (2, 5, 9)),
    Site("Water is", (0, 1)),
    Site("Bruno Lindqvist lives in the city of", (3, 6)),
    Site("The secret code of Alice Moreau is", (6,)),
    Site("Clara", (0,)),
    Site("The profession of Clara Okafor is surgeon.", (1, 4, 7)),
]


def _model(model_type: str) -> LoadedModel:
    config = AutoConfig.for_model(model_type, **SMALL)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    return as_loaded(model, model_type)


def _requests(lm: LoadedModel) -> list:
    return prepare_requests(lm, [ForgetRecord(f["prompt"], f["answer"], f["subject"])
                                 for f in tiny_facts()[:3]])


def test_chunks_cover_every_site_once_within_the_budget() -> None:
    lm = _model("llama")
    lengths = [len(lm.tokenizer(s.text)["input_ids"]) for s in SITES]
    budget = 2 * max(lengths)  # some chunks hold two texts, the longest one alone
    chunks = chunking.site_chunks(lm, SITES, budget)
    assert len(chunks) > 1
    members = [i for c in chunks for i in c.members]
    assert sorted(members) == list(range(len(SITES)))
    assert [lengths[i] for i in members] == sorted(lengths)  # shortest first
    for c in chunks:
        rows, width = c.shape
        assert width == max(lengths[i] for i in c.members)
        assert rows * width <= budget or rows == 1
        assert len(c.row_idx) == sum(len(SITES[i].indices) for i in c.members)


@pytest.mark.parametrize("model_type", ["llama", "opt"])  # OPT: MLP inputs as 2-D rows
def test_chunked_readings_equal_one_batch(model_type: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lm = _model(model_type)
    requests = _requests(lm)
    templates = ["", "Note: "]

    def readings() -> tuple:
        prefix = key_prefix(lm, requests, templates, 1, 3, SITES)
        return (capture(lm, SITES, 2, 3),
                compute_keys(lm, requests, templates, 2, 3, SITES, prefix),
                keys_at(lm, SITES, 1))

    (k_one, h_one), state_one, bank_one = readings()  # the default budget: one chunk
    assert len(chunking.site_chunks(lm, SITES)) == 1
    monkeypatch.setattr(chunking, "CHUNK_TOKENS", 1)  # every text a chunk of its own
    (k_many, h_many), state_many, bank_many = readings()
    reading_count = sum(len(s.indices) for s in SITES)
    assert k_one.shape == (64, reading_count) and h_one.shape == (32, reading_count)
    for a, b in [(k_many, k_one), (h_many, h_one), (bank_many, bank_one),
                 (state_many.k_f, state_one.k_f), (state_many.k_p, state_one.k_p),
                 (state_many.h_l, state_one.h_l)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_columns_follow_the_callers_site_order() -> None:
    """Chunks sort sites by length; the readings come back site by site as given."""
    lm = _model("llama")
    together = keys_at(lm, SITES, 2)  # (d_ff, S)
    alone = torch.cat([keys_at(lm, [s], 2) for s in SITES], dim=1)
    torch.testing.assert_close(together, alone, rtol=1e-5,
                               atol=1e-5 * float(alone.abs().max()))
