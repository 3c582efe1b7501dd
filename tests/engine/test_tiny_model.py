"""The tiny GPT-2 fixture: trained once, recalls (nearly) every synthetic fact exactly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support.tiny_model import (
    MIN_RECALL,
    build_tiny_gpt2,
    check_recall,
    known_facts,
    tiny_facts,
)
from zerounlearn.loading import load_model
from zerounlearn.tokens import answer_batch, score_answers


def test_facts_are_deterministic_and_grouped() -> None:
    facts = tiny_facts()
    assert facts == tiny_facts()
    assert len(facts) == 200
    assert len({f["prompt"] for f in facts}) == 200
    assert Counter(f["relation"] for f in facts) == {
        "secret_code": 50,
        "city": 50,
        "profession": 50,
        "birth_year": 50,
    }
    for f in facts:
        assert f["answer"].startswith(" ")
        assert f["subject"] in f["prompt"]


def test_tiny_gpt2_recalls_its_facts(tiny_gpt2_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    assert model.config.model_type == "gpt2"
    assert model.config.n_layer == 2 and model.config.n_embd == 128
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id is not None
    facts = tiny_facts()
    batch = answer_batch(tokenizer, [f["prompt"] for f in facts], [f["answer"] for f in facts])
    scored = score_answers(model, batch)
    # all of them with the kernels at hand; MIN_RECALL allows a CPU's rounding
    assert sum(ok for _, ok in scored) >= MIN_RECALL * len(facts)
    known = known_facts(load_model(str(tiny_gpt2_dir)))
    assert known == [f for f, (_, ok) in zip(facts, scored, strict=True) if ok]
    # codes and years are several tokens long (digits split one by one, as in SmolLM2)
    assert max(len(a) for a in batch.answer_ids) > 1


def test_build_returns_at_once_when_built(tiny_gpt2_dir: Path) -> None:
    before = (tiny_gpt2_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_gpt2(tiny_gpt2_dir) == tiny_gpt2_dir
    assert (tiny_gpt2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_a_model_below_the_recall_margin_is_refused() -> None:
    check_recall("GPT-2", 1.0)
    check_recall("GPT-2", 199 / 200)  # one fact missed: a CPU's rounding
    with pytest.raises(RuntimeError, match="recalls only"):
        check_recall("GPT-2", 195 / 200)
