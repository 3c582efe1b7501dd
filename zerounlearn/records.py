"""Forget records: what a caller asks the model to forget, validated once at the edge."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zerounlearn.errors import InvalidRecord


@dataclass(frozen=True)
class Neighbor:
    """A prompt whose answer must NOT change (specificity)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class ForgetRecord:
    """One fact to forget.

    prompt: the sensitive input ("The home address of Jane Roe is").
    answer: the continuation the model produces now, with its leading space (" 12 Elm").
    subject: span of the prompt whose last token is the edit position; None = last token.
    target: the neutral continuation; None = the method's default (end-of-text token).
    paraphrases / neighbors: used by verification only.
    """

    prompt: str
    answer: str
    subject: str | None = None
    target: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighbors: tuple[Neighbor, ...] = field(default_factory=tuple)

    def sha256(self) -> str:
        """Stable hash of the record's content (what manifests store instead of text)."""
        payload = json.dumps(record_to_dict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def record_to_dict(record: ForgetRecord) -> dict[str, Any]:
    return {
        "prompt": record.prompt,
        "answer": record.answer,
        "subject": record.subject,
        "target": record.target,
        "paraphrases": list(record.paraphrases),
        "neighbors": [{"prompt": n.prompt, "answer": n.answer} for n in record.neighbors],
    }


def record_from_dict(data: Mapping[str, Any], index: int = 0) -> ForgetRecord:
    """Build a record from JSON-like data; errors name the field, never its text."""
    if not isinstance(data, Mapping):
        raise InvalidRecord(f"records[{index}] must be an object")
    neighbors = []
    for j, n in enumerate(data.get("neighbors") or ()):
        if not isinstance(n, Mapping) or "prompt" not in n or "answer" not in n:
            raise InvalidRecord(f"records[{index}].neighbors[{j}] needs 'prompt' and 'answer'")
        neighbors.append(Neighbor(prompt=str(n["prompt"]), answer=str(n["answer"])))
    return ForgetRecord(
        prompt=_text(data, "prompt", index),
        answer=_text(data, "answer", index),
        subject=data.get("subject"),
        target=data.get("target"),
        paraphrases=tuple(str(p) for p in (data.get("paraphrases") or ())),
        neighbors=tuple(neighbors),
    )


def _text(data: Mapping[str, Any], key: str, index: int) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidRecord(f"records[{index}].{key} must be a string")
    return value


def validate_records(records: Iterable[ForgetRecord | Mapping[str, Any]]) -> list[ForgetRecord]:
    """Check the model-independent rules; token-level checks happen in the engine."""
    out: list[ForgetRecord] = []
    for i, rec in enumerate(records):
        r = rec if isinstance(rec, ForgetRecord) else record_from_dict(rec, i)
        if not r.prompt.strip():
            raise InvalidRecord(f"records[{i}].prompt is empty")
        if not r.answer.strip():
            raise InvalidRecord(f"records[{i}].answer is empty")
        if r.subject is not None:
            if not r.subject.strip():
                raise InvalidRecord(f"records[{i}].subject is empty")
            if r.subject not in r.prompt:
                raise InvalidRecord(f"records[{i}].subject does not occur in records[{i}].prompt")
        if r.target is not None and not r.target.strip():
            raise InvalidRecord(f"records[{i}].target is empty")
        out.append(r)
    if not out:
        raise InvalidRecord("records is empty: give at least one record to forget")
    return out


@dataclass(frozen=True)
class RetainFact:
    """A fact the model must keep (its retain bank): the edit protects its keys.

    prompt / answer as in ForgetRecord; subject (optional) marks where the fact is
    recalled, so its keys are read from the subject on, and lets its subject stand in
    for a forget record's ("The capital of <retained subject> is") as a protected prompt.
    """

    prompt: str
    answer: str
    subject: str | None = None


def validate_retain(facts: Iterable[RetainFact | Mapping[str, Any]] | None) -> list[RetainFact]:
    """Retain facts from objects or JSON-like dicts; errors name retain[i], never text."""
    out: list[RetainFact] = []
    for i, fact in enumerate(facts or ()):
        if isinstance(fact, RetainFact):
            f = fact
        else:
            if not isinstance(fact, Mapping):
                raise InvalidRecord(f"retain[{i}] must be an object")
            for key in ("prompt", "answer"):
                if not isinstance(fact.get(key), str):
                    raise InvalidRecord(f"retain[{i}].{key} must be a string")
            subject = fact.get("subject")
            if subject is not None and not isinstance(subject, str):
                raise InvalidRecord(f"retain[{i}].subject must be a string")
            f = RetainFact(fact["prompt"], fact["answer"], subject)
        if not f.prompt.strip() or not f.answer.strip():
            raise InvalidRecord(f"retain[{i}] needs a non-empty prompt and answer")
        if f.subject is not None and (not f.subject.strip() or f.subject not in f.prompt):
            raise InvalidRecord(f"retain[{i}].subject does not occur in retain[{i}].prompt")
        out.append(f)
    return out
