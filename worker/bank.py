"""Retain banks in the worker: measure which facts a model knows, hand the known ones to
forget edits, and let a forgotten fact leave the bank.

- `measure_retain` (job kind "retain") and `prepare_bank` (from the prepare job) score
  bank facts on the model's active version with teacher forcing: "known" when every
  answer token is the argmax. Only known facts are protected.
- `retain_for` gives a forget edit the known facts, minus those a record of the request
  forgets (same prompt): the request wins. After the version is published,
  `release_forgotten` takes those facts out of the bank and audits them by hash.
- `known_bank_facts` is the helper other checks (verification, quality gate) call.

Bank text is never logged, never put in a job document, a manifest or an audit entry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from store import ArtifactStore
from store.enums import FactStatus, JobKind, ModelStatus
from store.hashing import canonical_json, sha256_hex
from store.retain import counts
from worker.context import WorkerContext, get_context
from worker.errors import InvalidRequest, ModelNotReady, record_texts
from worker.jobs import JobRun, run_job
from zerounlearn.errors import InvalidRecord
from zerounlearn.evaluate import reproduced
from zerounlearn.loading import BUILTIN_SMOLLM2

logger = logging.getLogger(__name__)

MEASURE_BATCH = 32
"""Facts scored per forward pass when measuring a bank."""
SCOPES = ("pending", "all")
Progress = Callable[[str, float], None]


def _engine_fact(fact: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": fact["prompt"], "answer": fact["answer"], "subject": fact.get("subject")}


def known_bank_facts(store: ArtifactStore, model_id: str) -> list[dict[str, Any]]:
    """The model's bank facts measured as known: [{"prompt", "answer", "subject"}]."""
    return [_engine_fact(f) for f in store.retain.facts(model_id)
            if f["status"] == FactStatus.KNOWN]


# -------------------------------------------------------------------- forget
@dataclass
class Selection:
    """What one forget edit gets from the bank."""

    facts: list[dict[str, Any]] = field(default_factory=list)  # known, for the engine
    hashes: list[str] = field(default_factory=list)  # their sha256, in the same order
    leaving: list[dict[str, Any]] = field(default_factory=list)  # forgotten: {"id", "sha256"}

    def summary(self) -> dict[str, Any]:
        """Text-free: how many bank facts were given, a digest of their hashes, and the
        hashes of the facts the request forgets (they leave the bank)."""
        return {"bank_facts": len(self.facts),
                "bank_digest": sha256_hex(canonical_json(sorted(self.hashes))),
                "left_bank": [f["sha256"] for f in self.leaving]}


def _prompt_key(prompt: str) -> str:
    return prompt.strip()


def retain_for(
    store: ArtifactStore, model_id: str, records: Iterable[dict[str, Any]],
    secrets: list[str] | None = None,
) -> Selection:
    """The known bank facts to protect while forgetting `records`; a fact whose prompt a
    record forgets is left out (and leaves the bank once the edit is published).
    secrets: extended with the bank's text, so a failure message quoting it is scrubbed."""
    forgotten = {_prompt_key(r["prompt"]) for r in records if isinstance(r.get("prompt"), str)}
    selection = Selection()
    for fact in store.retain.facts(model_id):
        if _prompt_key(fact["prompt"]) in forgotten:
            selection.leaving.append({"id": fact["id"], "sha256": fact["sha256"]})
        elif fact["status"] == FactStatus.KNOWN:
            selection.facts.append(_engine_fact(fact))
            selection.hashes.append(fact["sha256"])
    if secrets is not None:
        secrets.extend(record_texts(selection.facts))
    return selection


def manifest_entry(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's "retain": the bank summary and the engine's text-free selection
    counts (patch.metadata["bank"] and ["retain"]); None when no bank was involved."""
    summary = metadata.get("bank")
    if summary is None:
        return None
    return {**summary, "engine": metadata.get("retain")}


def release_forgotten(
    store: ArtifactStore, worker_name: str | None, model_id: str, selection: Selection,
    version: str, job_ids: list[str],
) -> None:
    """The request won: its facts leave the bank, audited by hash. Logged, not raised,
    on failure: the version is published already."""
    if not selection.leaving:
        return
    try:
        gone = store.retain.remove(model_id, [f["id"] for f in selection.leaving])
        if gone:
            store.audit.append(
                f"worker:{worker_name or 'unnamed'}", "retain.forgotten",
                ids={"model": model_id, "version": version, "job": job_ids[0]},
                record_hashes=[f["sha256"] for f in gone],
                detail={"reason": "forgotten", "facts": len(gone), "jobs": list(job_ids)})
            logger.info("model %s: %d fact(s) left the retain bank (forgotten in %s)",
                        model_id, len(gone), version)
    except Exception as exc:  # noqa: BLE001 - the version is live: report, do not fail
        logger.error("model %s: could not take forgotten facts out of the retain bank: %s",
                     model_id, type(exc).__name__)


# ------------------------------------------------------------------- measure
def fact_statuses(lm: Any, facts: list[dict[str, Any]],
                  progress: Progress | None = None) -> dict[str, str]:
    """{fact id: "known" | "unknown" | "invalid"} on `lm`; a batch the model cannot take
    (a fact too long, or without a token) is scored fact by fact."""
    out: dict[str, str] = {}
    for start in range(0, len(facts), MEASURE_BATCH):
        chunk = facts[start : start + MEASURE_BATCH]
        try:
            flags: list[bool | None] = list(reproduced(lm, [_engine_fact(f) for f in chunk]))
        except InvalidRecord:
            flags = [_one(lm, f) for f in chunk]
        for fact, flag in zip(chunk, flags, strict=True):
            out[fact["id"]] = (FactStatus.INVALID if flag is None
                               else FactStatus.KNOWN if flag else FactStatus.UNKNOWN)
        if progress is not None:
            progress("measure", min(1.0, (start + len(chunk)) / len(facts)))
    return out


def _one(lm: Any, fact: dict[str, Any]) -> bool | None:
    try:
        return reproduced(lm, [_engine_fact(fact)])[0]
    except InvalidRecord:
        return None


def measure_bank(
    ctx: WorkerContext, model_id: str, scope: str = "pending",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure the bank's pending (or all) facts on the active version; the counts."""
    store = ctx.store
    facts = store.retain.facts(model_id)
    todo = [f for f in facts if scope == "all" or f["status"] == FactStatus.PENDING]
    version = store.get_model(model_id)["active_version"]
    if not todo:
        return {"version": version, "measured": 0, "counts": counts(facts)}
    lm = ctx.models.get(model_id, version)
    statuses = fact_statuses(lm, todo, progress)
    store.retain.set_status(model_id, statuses, version)
    known = sum(s == FactStatus.KNOWN for s in statuses.values())
    logger.info("model %s: %d retain fact(s) measured on %s, %d known", model_id,
                len(statuses), version, known)
    return {"version": version, "measured": len(statuses),
            "counts": counts(store.retain.facts(model_id))}


def prepare_bank(ctx: WorkerContext, model_id: str) -> dict[str, Any]:
    """At prepare time: seed the built-in model's bank (once: facts removed later stay
    removed) and measure every pending fact."""
    store = ctx.store
    model = store.get_model(model_id)
    if model.get("source") == BUILTIN_SMOLLM2 and not store.retain.read(model_id)["seeded"]:
        from zerounlearn.datasets import builtin_retain_bank

        facts = [{k: f.get(k) for k in ("prompt", "answer", "subject", "relation")}
                 for f in builtin_retain_bank()]
        added, _ = store.retain.add(model_id, facts, origin="builtin",
                                    actor=f"worker:{ctx.name or 'unnamed'}", seed=True)
        store.audit.append(f"worker:{ctx.name or 'unnamed'}", "retain.added",
                           ids={"model": model_id}, record_hashes=[f["sha256"] for f in added],
                           detail={"added": len(added), "origin": "builtin"})
    return measure_bank(ctx, model_id)


def measure_retain(job_id: str, model_id: str, scope: str = "pending") -> dict[str, Any]:
    """Job "retain": measure which bank facts the active version reproduces."""
    ctx = get_context()
    store = ctx.store

    def body(run: JobRun) -> dict[str, Any]:
        if scope not in SCOPES:
            raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}")
        model = store.get_model(model_id)
        if model.get("status") != ModelStatus.READY:
            raise ModelNotReady(f"model {model_id} is {model.get('status')!r}, not 'ready': "
                                "its prepare job measures the bank")
        run.progress("measure", 0.0)
        result = measure_bank(ctx, model_id, scope, run.progress)
        store.update_job(job_id, version=result["version"])
        return result

    secrets: list[str] = []
    with contextlib.suppress(Exception):  # an unknown model fails inside run_job
        secrets = record_texts([_engine_fact(f) for f in store.retain.facts(model_id)])
    return run_job(store, job_id, JobKind.RETAIN, body, worker_name=ctx.name, secrets=secrets)
