"""Evaluation metrics on the tiny GPT-2 (real model, trained in the session)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from tests.support.tiny_model import tiny_facts
from zerounlearn.evaluate import (
    DEFAULT_REFERENCE_TEXTS,
    evaluate,
    greedy_continuations,
    greedy_generate,
    perplexity,
)
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.tokens import encode_continuation


@pytest.fixture(scope="module")
def tiny_lm(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir))


def _record(fact: dict, answer: str | None = None, **extra) -> dict:
    return {"prompt": fact["prompt"], "subject": fact["subject"],
            "answer": answer if answer is not None else fact["answer"], **extra}


def test_known_facts_give_full_efficacy(tiny_lm: LoadedModel) -> None:
    facts = tiny_facts()
    neighbours = [{"prompt": f["prompt"], "answer": f["answer"]} for f in facts[100:106]]
    records = [
        _record(f, paraphrases=[f["prompt"]], neighbors=neighbours[i % 3 :: 3])
        for i, f in enumerate(facts[:12])
    ]
    result = evaluate(tiny_lm, records, reference_texts=[])
    summary = result["summary"]
    assert summary["efficacy"] == 100.0
    assert summary["generalization"] == 100.0
    assert summary["specificity"] == 100.0
    assert summary["perplexity"] is None  # no reference text asked for
    assert summary["generation_match"] == 100.0
    assert summary["answer_probability"] > 0.9
    assert (summary["num_records"], summary["num_paraphrases"], summary["num_neighbors"]) == (
        12, 12, 24)
    first = result["records"][0]
    assert first["index"] == 0 and first["reproduced"] and not first["forgotten"]
    assert first["paraphrases_reproduced"] == [True]
    assert first["neighbors_reproduced"] == [True, True]
    assert first["generation_matches_answer"] is True


def test_wrong_answers_count_as_forgotten(tiny_lm: LoadedModel) -> None:
    facts = [f for f in tiny_facts() if f["relation"] == "secret_code"][:6]
    # each prompt paired with the next person's code: never what the model says
    records = [_record(f, answer=facts[(i + 1) % 6]["answer"]) for i, f in enumerate(facts)]
    result = evaluate(tiny_lm, records, reference_texts=[])
    assert result["summary"]["efficacy"] == 0.0
    assert result["summary"]["generation_match"] == 0.0
    assert result["summary"]["generalization"] is None
    assert result["summary"]["specificity"] is None
    assert result["summary"]["answer_probability"] < 0.1
    assert all(r["forgotten"] and not r["generation_matches_answer"] for r in result["records"])


def test_result_holds_no_record_text(tiny_lm: LoadedModel) -> None:
    facts = [f for f in tiny_facts() if f["relation"] in ("city", "profession")][:10]
    records = [
        _record(f, neighbors=[{"prompt": facts[-1]["prompt"], "answer": facts[-1]["answer"]}])
        for f in facts[:-1]
    ]
    result = evaluate(tiny_lm, records, reference_texts=["Alice lives in the city."])
    dumped = json.dumps(result, allow_nan=False)  # strict JSON as well
    generations = [greedy_generate(tiny_lm, f["prompt"], 6) for f in facts]
    for text in [*(f["prompt"] for f in facts), *(f["subject"] for f in facts),
                 *(f["answer"] for f in facts), *generations]:
        assert text.strip() and text not in dumped and text.strip() not in dumped


def test_perplexity_lower_on_training_text(tiny_lm: LoadedModel) -> None:
    sentences = [f"{f['prompt']}{f['answer']}." for f in tiny_facts()[:40]]
    words = " ".join(sentences).split()
    random.Random(0).shuffle(words)
    shuffled = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    trained = perplexity(tiny_lm, sentences, batch_size=8)
    scrambled = perplexity(tiny_lm, shuffled, batch_size=8)
    assert math.isfinite(trained) and math.isfinite(scrambled)
    assert 1.0 < trained < scrambled
    # batching does not change the token-weighted value
    assert perplexity(tiny_lm, sentences, batch_size=3) == pytest.approx(trained, rel=1e-4)


def test_default_reference_texts_are_used(tiny_lm: LoadedModel) -> None:
    assert len(DEFAULT_REFERENCE_TEXTS) >= 10
    fact = tiny_facts()[0]
    phases: list[tuple[str, float]] = []
    result = evaluate(tiny_lm, [_record(fact)], progress=lambda p, f: phases.append((p, f)))
    expected = perplexity(tiny_lm, DEFAULT_REFERENCE_TEXTS)
    assert result["summary"]["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert phases[0] == ("evaluate", 0.0) and phases[-1] == ("evaluate", 1.0)


def test_greedy_generation_matches_answer_tokens(tiny_lm: LoadedModel) -> None:
    facts = tiny_facts()[:6]
    conts = greedy_continuations(tiny_lm, [f["prompt"] for f in facts], 5, batch_size=4)
    for fact, cont in zip(facts, conts, strict=True):
        answer = encode_continuation(tiny_lm.tokenizer, fact["answer"])
        assert len(cont) == 5 and cont[: len(answer)] == answer
    # with expected tokens a batch stops once every row matched or left its answer
    answers = [encode_continuation(tiny_lm.tokenizer, f["answer"]) for f in facts]
    early = greedy_continuations(tiny_lm, [f["prompt"] for f in facts], 8, expected=answers)
    assert all(len(c) == max(len(a) for a in answers) for c in early)
    wrong = [[a[0] + 1] + a[1:] for a in answers]  # first token off: decided at once
    assert all(len(c) == 1 for c in greedy_continuations(
        tiny_lm, [f["prompt"] for f in facts], 8, expected=wrong))
    text = greedy_generate(tiny_lm, facts[0]["prompt"], max_new_tokens=10)
    assert text.startswith(facts[0]["answer"])


def test_no_records_gives_no_efficacy(tiny_lm: LoadedModel) -> None:
    result = evaluate(tiny_lm, [], reference_texts=["The secret code of Alice Moreau is 4821."])
    assert result["records"] == []
    assert result["summary"]["efficacy"] is None
    assert result["summary"]["answer_probability"] is None
    assert math.isfinite(result["summary"]["perplexity"])


def test_generation_check_can_be_skipped(tiny_lm: LoadedModel) -> None:
    result = evaluate(tiny_lm, [_record(tiny_facts()[0])], [], generate_tokens=0)
    assert result["records"][0]["generation_matches_answer"] is None
    assert result["summary"]["generation_match"] is None
    assert result["summary"]["efficacy"] == 100.0
