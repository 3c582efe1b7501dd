"""Packaged data: world facts SmolLM2-135M-Instruct knows, and neutral reference texts.

`world_facts()`: facts checked against SmolLM2-135M-Instruct with
`scripts/check_world_facts.py` (answer fully reproduced under teacher forcing). Each is
{"relation", "prompt", "subject", "answer" (leading space kept), "paraphrases",
"paraphrases_known"}: `paraphrases_known[i]` says whether the model also reproduces the
answer after `paraphrases[i]`. Several relations hold >= 4 facts, so a test can forget
some and keep same-relation neighbours.

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


def reference_texts() -> list[str]:
    """The packaged reference paragraphs for perplexity."""
    return list(_load("reference_texts.json")["texts"])
