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


# ----------------------------------------------------------------------------- splits
# Every packaged fact (world_facts() + more_facts()) belongs to exactly one part:
# - "bank": the built-in SmolLM2 retain bank, facts the service protects on its own;
# - "tune": where defaults are chosen (forget sets and held-out facts of tuning runs);
# - "test": where figures are reported; no default was chosen on it.
# Within each relation, facts are ordered by a hash of their prompt and dealt out
# bank, tune, test, tune, test, bank, ... (every relation with >= 3 facts has all three
# parts). Adding facts to the data files reshuffles the parts: report the commit.
SPLITS = ("bank", "tune", "test")
_DEAL = ("bank", "tune", "test", "tune", "test")  # 1/5 bank, 2/5 tune, 2/5 test


def _fact_hash(fact: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(fact["prompt"].encode("utf-8")).hexdigest()


def split_facts(part: str) -> list[dict[str, Any]]:
    """The packaged facts of one part ("bank", "tune" or "test"), relation by relation."""
    if part not in SPLITS:
        raise ValueError(f"unknown split {part!r}; known: {', '.join(SPLITS)}")
    return _deal(world_facts() + more_facts(), _DEAL, part)


def _deal(facts: list[dict[str, Any]], deal: tuple[str, ...], part: str
          ) -> list[dict[str, Any]]:
    """The facts dealt to `part`: relation by relation (sorted), each relation's facts in
    hash order dealt out along `deal`, cyclically."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for fact in facts:
        groups.setdefault(fact["relation"], []).append(fact)
    out = []
    for relation in sorted(groups):
        ordered = sorted(groups[relation], key=_fact_hash)
        out += [f for i, f in enumerate(ordered) if deal[i % len(deal)] == part]
    return out


def unseen_facts(part: str) -> list[dict[str, Any]]:
    """Known facts no tuning run saw, as extra held-out facts for the "tune" or "test"
    part (zerounlearn/data/unseen_facts.json, written after the defaults were chosen).

    Benchmarks never forget them; they only score whether an edit kept them, so the
    packaged bank / tune / test parts stay as they were. Within each relation, in hash
    order, they alternate tune, test. Tune on the "tune" half only.
    """
    if part not in ("tune", "test"):
        raise ValueError(f"unseen facts have a tune and a test half, not {part!r}")
    return _deal(json.loads(json.dumps(_load("unseen_facts.json")["facts"])), ("tune", "test"),
                 part)


def builtin_retain_bank() -> list[dict[str, Any]]:
    """The built-in SmolLM2 model's retain bank: the "bank" part, as retain facts
    ({"prompt", "answer", "subject", "relation"}), all reproduced by the base model."""
    return [{"prompt": f["prompt"], "answer": f["answer"], "subject": f["subject"],
             "relation": f["relation"]} for f in split_facts("bank")]
