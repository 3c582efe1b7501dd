"""The quality gate: a forget edit goes live only if the new version is still a good model.

Before a new version is published, the worker compares the edited model with its parent
(the version the edit was built on):
- perplexity on the reference texts: the % increase (`max_perplexity_increase`);
- efficacy: % of the request's records the new version still reproduces (`max_efficacy`);
- specificity of the request's neighbours (those that are not themselves forget prompts
  of the batch): the drop in points (`max_neighbor_drop`);
- specificity of the model's guard facts (`guard_facts`), measured on the parent before
  the patch is applied: the drop in points (`max_guard_drop`).
A check with nothing to measure (no neighbours, no guard facts) passes; a perplexity
that is not finite fails. Limits: the worker's settings (ZEROUNLEARN_GATE_*) with the
request's own values over them, never past ZEROUNLEARN_GATE_LIMIT_* (the API lets only
admins loosen them; this is the backstop). Figures and messages hold numbers only,
never request text.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from store import ArtifactStore
from worker.bank import known_bank_facts
from worker.context import WorkerContext
from worker.errors import InvalidRequest, QualityGateFailed
from worker.settings import GATE_DEFAULTS, WorkerSettings
from zerounlearn.datasets import world_facts
from zerounlearn.evaluate import reproduced
from zerounlearn.records import ForgetRecord

logger = logging.getLogger(__name__)

BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"  # zerounlearn.loading's name for it
GUARD_COUNT = 30
"""Guard facts of the built-in model: a fixed sample of the packaged world facts."""
MIN_SUBJECT_CHARS = 3
"""A request's subject this long or longer takes the guard facts about it out of the gate."""
FAILED = "quality_gate.failed"
"""Audit action of an edit the gate stopped (detail: the figures)."""


@dataclass(frozen=True)
class GatePlan:
    """What one forget job's edit is judged by: its limits and the model's guard facts."""

    limits: dict[str, float]
    guard: list[dict[str, str]]


# ------------------------------------------------------------------ limits
def gate_limits(settings: WorkerSettings, requested: Mapping[str, Any] | None) -> dict[str, float]:
    """The worker's gate with the request's values over it; InvalidRequest for an unknown
    name or a value that is not a finite number from 0 to the server's limit."""
    limits = dict(settings.gate)
    if requested is None:
        return limits
    if not isinstance(requested, Mapping):
        raise InvalidRequest("quality_gate must be an object")
    for name, value in requested.items():
        if name not in GATE_DEFAULTS:
            raise InvalidRequest(f"quality_gate: unknown limit {name!r}")
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not 0 <= value <= settings.gate_limits[name]:
            raise InvalidRequest(f"quality_gate.{name} must be a number from 0 to "
                                 f"{settings.gate_limits[name]:g}")
        limits[name] = float(value)
    return limits


# ------------------------------------------------------------------ guard facts
def guard_facts(ctx: WorkerContext, model_doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """The facts any edit of this model must keep: [{"prompt", "answer"}].

    The one place that says what a model is known to know. The built-in SmolLM2:
    GUARD_COUNT packaged world facts it answers; every model: the facts of its retain
    bank measured as known (worker.bank.known_bank_facts), once per prompt.
    """
    facts: list[dict[str, str]] = []
    if model_doc.get("source") == BUILTIN_SMOLLM2:
        facts = [dict(fact) for fact in _builtin_guard_facts()]
    seen = {f["prompt"] for f in facts}
    for fact in known_bank_facts(ctx.store, model_doc["id"]):  # the retain bank's known
        if fact["prompt"] not in seen:
            seen.add(fact["prompt"])
            facts.append({"prompt": fact["prompt"], "answer": fact["answer"]})
    return facts


@functools.lru_cache(maxsize=1)
def _builtin_guard_facts() -> tuple[dict[str, str], ...]:
    """Round robin over the relations, in file order: the same 30 facts every time."""
    by_relation: dict[str, list[dict[str, Any]]] = {}
    for fact in world_facts():
        by_relation.setdefault(fact["relation"], []).append(fact)
    picked: list[dict[str, str]] = []
    for i in range(max(len(facts) for facts in by_relation.values())):
        for facts in by_relation.values():
            if i < len(facts) and len(picked) < GUARD_COUNT:
                picked.append({"prompt": facts[i]["prompt"], "answer": facts[i]["answer"]})
    return tuple(picked)


def unrelated(facts: list[dict[str, str]], records: Sequence[ForgetRecord]) -> list[dict[str, str]]:
    """The guard facts the request does not name: neither one of its prompts nor about
    one of its subjects (those may go with the forgotten facts)."""
    prompts = {r.prompt for r in records}
    subjects = [r.subject for r in records
                if r.subject and len(r.subject.strip()) >= MIN_SUBJECT_CHARS]
    return [f for f in facts
            if f["prompt"] not in prompts and not any(s in f["prompt"] for s in subjects)]


def reproduced_facts(lm: Any, facts: list[dict[str, str]]) -> list[bool]:
    """Per fact: does `lm` still give its answer (teacher forcing)?"""
    return reproduced(lm, facts) if facts else []


# ------------------------------------------------------------------ judging
def neighbor_flags(records: Sequence[ForgetRecord], evaluation: dict[str, Any]) -> list[bool]:
    """Reproduced or not, per neighbour of the batch; a neighbour that is a forget prompt
    of the batch (another coalesced request wants it gone) does not count."""
    forget_prompts = {r.prompt for r in records}
    flags: list[bool] = []
    for record, row in zip(records, evaluation["records"], strict=True):
        for neighbor, ok in zip(record.neighbors, row["neighbors_reproduced"], strict=True):
            if neighbor.prompt not in forget_prompts:
                flags.append(bool(ok))
    return flags


def _percent(flags: list[bool]) -> float | None:
    return 100.0 * sum(flags) / len(flags) if flags else None


def _num(value: float | None) -> float | None:
    """JSON-safe: finite and rounded, else None."""
    return round(value, 4) if value is not None and math.isfinite(value) else None


def _drop_check(before: list[bool], after: list[bool], limit: float) -> dict[str, Any]:
    parent, version = _percent(before), _percent(after)
    drop = None if parent is None or version is None else parent - version
    return {"count": len(before), "parent": _num(parent), "version": _num(version),
            "drop": _num(drop), "limit": limit, "passed": drop is None or drop <= limit}


def judge(
    limits: Mapping[str, float],
    before: dict[str, Any],
    after: dict[str, Any],
    neighbors: tuple[list[bool], list[bool]],
    guard: tuple[list[bool], list[bool]],
) -> dict[str, Any]:
    """The figures of every check and whether the edit passed; `before`/`after` are
    zerounlearn.evaluate summaries of the parent and of the edited model."""
    p0, p1 = before.get("perplexity"), after.get("perplexity")
    rise = 100.0 * (p1 / p0 - 1.0) if p0 and p1 is not None else None
    rise = _num(rise)
    limit = limits["max_perplexity_increase"]
    efficacy = after.get("efficacy")
    checks = {
        "perplexity": {"parent": _num(p0), "version": _num(p1), "increase_pct": rise,
                       "limit": limit, "passed": rise is not None and rise <= limit},
        "efficacy": {"parent": _num(before.get("efficacy")), "version": _num(efficacy),
                     "limit": limits["max_efficacy"],
                     "passed": efficacy is None or efficacy <= limits["max_efficacy"]},
        "neighbors": _drop_check(*neighbors, limits["max_neighbor_drop"]),
        "guard": _drop_check(*guard, limits["max_guard_drop"]),
    }
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


def failure(figures: dict[str, Any]) -> QualityGateFailed:
    """The job's error: which checks failed, by how much (numbers only)."""
    parts = []
    for name, check in figures["checks"].items():
        if check["passed"]:
            continue
        if name == "perplexity":
            rise = check["increase_pct"]
            shown = "not finite" if rise is None else f"+{rise:.4g}%"
            parts.append(f"perplexity {shown} (limit +{check['limit']:g}%)")
        elif name == "efficacy":
            parts.append(f"{check['version']:.4g}% of the records still reproduced "
                         f"(limit {check['limit']:g}%)")
        else:
            label = "neighbours" if name == "neighbors" else "guard facts"
            parts.append(f"{label} -{check['drop']:.4g} points of {check['count']} "
                         f"(limit {check['limit']:g})")
    return QualityGateFailed(
        "the edited model failed the quality gate: " + "; ".join(parts)
        + "; no version was published and the active version is unchanged", figures)


def audit_failure(
    store: ArtifactStore, worker_name: str | None, model_id: str, base: str,
    job_ids: list[str], record_hashes: list[str], figures: dict[str, Any],
) -> None:
    """Write the stopped edit to the audit trail (the jobs' own job.failed follow); a
    failure to append is logged: the jobs' documents still say what happened."""
    try:
        store.audit.append(
            f"worker:{worker_name or 'unnamed'}", FAILED,
            ids={"job": job_ids[0], "model": model_id, "version": base},
            record_hashes=record_hashes, detail={"jobs": list(job_ids), **figures},
        )
    except OSError as exc:
        logger.error("could not audit the stopped edit of job %s: %s", job_ids[0],
                     type(exc).__name__)
