"""The packaged world facts and reference texts; SmolLM2 knows the facts (slow)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from zerounlearn import datasets
from zerounlearn.datasets import more_facts, reference_texts, world_facts


def test_world_facts_are_well_formed() -> None:
    facts = world_facts()
    assert len(facts) >= 30
    per_relation = Counter(f["relation"] for f in facts)
    assert sum(1 for n in per_relation.values() if n >= 4) >= 3
    assert len({f["prompt"] for f in facts}) == len(facts)
    for f in facts:
        assert f["answer"].startswith(" ") and f["answer"].strip()
        assert f["subject"] in f["prompt"]
        assert 1 <= len(f["paraphrases"]) <= 2
        assert len(f["paraphrases_known"]) == len(f["paraphrases"])
        assert all(isinstance(k, bool) for k in f["paraphrases_known"])
    facts[0]["prompt"] = "changed"
    assert world_facts()[0]["prompt"] != "changed"  # callers get a copy


def test_reference_texts() -> None:
    texts = reference_texts()
    assert len(texts) >= 60 and len(set(texts)) == len(texts)
    assert all(40 <= len(t.split()) <= 90 for t in texts)
    assert all(2 <= len(re.findall(r"[.!?](?:\s|$)", t)) <= 4 for t in texts)  # sentences
    raw = json.loads((Path(datasets.__file__).parent / "data" / "reference_texts.json")
                     .read_text(encoding="utf-8"))
    domains = Counter(raw["domains"])
    assert len(raw["domains"]) == len(texts)  # domains[i] labels texts[i]
    assert len(domains) >= 8 and min(domains.values()) >= 5
    # neutral: no subject of the packaged facts (whose forgetting perplexity must not see)
    subjects = {f["subject"].removeprefix("the ") for f in world_facts() + more_facts()
                if f["relation"] != "opposite"}  # hot/cold, up/down: everyday words
    for text in texts:
        named = [s for s in subjects if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text, re.I)]
        assert not named, named


@pytest.mark.slow
def test_smollm2_knows_the_world_facts(smollm2_dir: Path) -> None:
    from zerounlearn.evaluate import evaluate, reproduced
    from zerounlearn.loading import load_model

    lm = load_model(str(smollm2_dir))
    facts = world_facts()
    records = [{"prompt": f["prompt"], "answer": f["answer"], "subject": f["subject"],
                "paraphrases": [p for p, ok in zip(f["paraphrases"], f["paraphrases_known"],
                                                   strict=True) if ok]}
               for f in facts]
    result = evaluate(lm, records, reference_texts=[], generate_tokens=1)
    assert result["summary"]["efficacy"] >= 90.0
    # the paraphrases recorded as known are known too
    assert result["summary"]["generalization"] >= 90.0
    # the unseen facts (benchmarks' extra held-out facts) are known as well
    unseen = datasets.unseen_facts("tune") + datasets.unseen_facts("test")
    kept = reproduced(lm, [{"prompt": f["prompt"], "answer": f["answer"]} for f in unseen])
    assert sum(kept) >= 0.9 * len(unseen)
