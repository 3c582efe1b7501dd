"""Packaged data: world facts SmolLM2-135M-Instruct knows, and neutral reference texts.

`world_facts()`: facts checked against SmolLM2-135M-Instruct with
`scripts/check_world_facts.py` (answer fully reproduced under teacher forcing). Each is
{"relation", "prompt", "subject", "answer" (leading space kept), "paraphrases",
"paraphrases_known"}: `paraphrases_known[i]` says whether the model also reproduces the
answer after `paraphrases[i]`. Several relations hold >= 4 facts, so a test can forget
some and keep same-relation neighbours. `more_facts()`: more facts in the same format.

`reference_texts()`: short general-English paragraphs written for this project, the
default text for perplexity.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_DATA = Path(__file__).resolve().parent / "data"


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((_DATA / name).read_text(encoding="utf-8"))


def world_facts() -> list[dict[str, Any]]:
    """The packaged world facts (a fresh copy; callers may modify it)."""
    return json.loads(json.dumps(_load("world_facts.json")["facts"]))


def more_facts() -> list[dict[str, Any]]:
    """More known facts beyond world_facts(), same format (a fresh copy), checked by
    `scripts/check_world_facts.py --extra`: more of the same relations plus new ones.
    Kept apart so that world_facts() and the code built on it stay as they were; the
    sequential benchmark (bench/bench_sequential.py) uses both."""
    return json.loads(json.dumps(_load("more_facts.json")["facts"]))


# The request the SmolLM2 defaults were tuned on (scripts/sweep.py) and that the slow
# engine test checks: 10 facts over 5 relations, neighbour j attached to record j.
TUNING_FORGET = [  # (relation, subject)
    ("capital", "France"), ("capital", "Germany"), ("capital", "Italy"),
    ("chemical_symbol", "gold"), ("chemical_symbol", "iron"), ("chemical_symbol", "oxygen"),
    ("landmark_city", "Eiffel Tower"), ("landmark_city", "Colosseum"),
    ("currency", "Russia"), ("language", "Turkey"),
]
TUNING_NEIGHBORS = [
    ("capital", "Spain"), ("capital", "Japan"), ("capital", "Norway"),
    ("chemical_symbol", "silver"), ("chemical_symbol", "sodium"),
    ("landmark_city", "Statue of Liberty"), ("landmark_city", "Acropolis"),
    ("currency", "Japan"), ("language", "Spain"), ("author", "To Kill a Mockingbird"),
]


def world_fact(relation: str, subject: str) -> dict[str, Any]:
    """One packaged fact; KeyError naming it when absent."""
    for fact in world_facts():
        if fact["relation"] == relation and fact["subject"] == subject:
            return fact
    raise KeyError(f"{relation}/{subject} is not in world_facts()")


def tuning_records() -> list[dict[str, Any]]:
    """TUNING_FORGET as forget records (known paraphrases only), each with its neighbour."""
    records = []
    for (rel, subj), (n_rel, n_subj) in zip(TUNING_FORGET, TUNING_NEIGHBORS, strict=True):
        f, n = world_fact(rel, subj), world_fact(n_rel, n_subj)
        paraphrases = [p for p, known in zip(f["paraphrases"], f["paraphrases_known"],
                                             strict=True) if known]
        records.append({"prompt": f["prompt"], "subject": f["subject"], "answer": f["answer"],
                        "paraphrases": paraphrases,
                        "neighbors": [{"prompt": n["prompt"], "answer": n["answer"]}]})
    return records


def reference_texts() -> list[str]:
    """The packaged reference paragraphs for perplexity."""
    return list(_load("reference_texts.json")["texts"])
