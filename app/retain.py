"""Retain banks on the API side: parse facts, add, list, remove, queue measurements.

A body of facts is JSON lines (one object a line, blank lines skipped) or a JSON array.
Errors name the line ("line 3: answer: ...") or the index ("[2].answer: ..."), never the
text. Adding facts to a ready model queues a "retain" job that measures which of them
the active version reproduces; while the model prepares, its prepare job does.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from app.auth import Principal
from app.errors import Forbidden, InvalidInput, field_path
from app.queue import JobQueue
from app.schemas_retain import MAX_FACTS_PER_REQUEST, RetainFactIn
from app.submission import Submission, submit_job
from store import ArtifactStore, NotFound
from store.enums import FactStatus, JobKind, ModelStatus
from store.retain import BankFull, counts, public

logger = logging.getLogger(__name__)

MAX_ERRORS_SHOWN = 10
ALLOWED_FIELDS = ", ".join(RetainFactIn.model_fields)


def parse_facts(body: bytes) -> list[dict[str, Any]]:
    """Facts from a JSON-lines or JSON-array body; InvalidInput naming lines/indices."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("body: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except (ValueError, RecursionError) as exc:
            line = getattr(exc, "lineno", None)
            where = f" (line {line})" if line else ""
            raise InvalidInput(f"body: not valid JSON{where}") from None
        entries = [(f"[{i}]", item) for i, item in enumerate(items)]
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((f"line {number}", json.loads(line)))
            except (ValueError, RecursionError):
                entries.append((f"line {number}", _NotJson()))
    if not entries:
        raise InvalidInput("body: give at least one fact (JSON lines or a JSON array)")
    if len(entries) > MAX_FACTS_PER_REQUEST:
        raise InvalidInput(f"body: at most {MAX_FACTS_PER_REQUEST} facts per request "
                           f"(got {len(entries)})")
    facts, errors = [], []
    for where, item in entries:
        fact, problems = _check(where, item)
        errors += problems
        if fact is not None:
            facts.append(fact)
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = len(errors) - len(shown)
        raise InvalidInput("; ".join(shown) + (f"; ... and {more} more" if more else ""))
    return facts


class _NotJson:
    """Stands for a line that is not JSON."""


def _check(where: str, item: Any) -> tuple[dict[str, Any] | None, list[str]]:
    if isinstance(item, _NotJson):
        return None, [f"{where}: not valid JSON"]
    if not isinstance(item, dict):
        return None, [f"{where}: must be a JSON object"]
    try:
        fact = RetainFactIn.model_validate(item)
    except ValidationError as exc:
        return None, [_problem(where, err) for err in exc.errors()]
    return fact.model_dump(exclude_none=True), []


def _problem(where: str, err: Any) -> str:
    if err.get("type") == "extra_forbidden":  # its name is the caller's text: not echoed
        return f"{where}: unknown field (allowed: {ALLOWED_FIELDS})"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {field_path(err.get('loc', ()))}: {msg}"


def add_facts(
    store: ArtifactStore, queue: JobQueue, who: Principal, model: dict[str, Any],
    facts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Add facts to the model's bank; queue their measurement when the model is ready."""
    model_id = model["id"]
    queue.ping()  # 503 before anything is written
    try:
        added, existing = store.retain.add(model_id, facts, origin="api", actor=who.key_id)
    except BankFull as exc:
        raise InvalidInput(f"body: {exc}") from None
    if added:
        store.audit.append(who.key_id, "retain.added", ids={"model": model_id},
                           record_hashes=[f["sha256"] for f in added],
                           detail={"added": len(added), "existing": len(existing)})
    bank = store.retain.facts(model_id)
    ids = {f["sha256"]: f["id"] for f in added + existing}
    out: dict[str, Any] = {
        "added": len(added), "existing": len(existing),
        "ids": [ids[store.retain.fact_hash(f)] for f in facts],
        "counts": counts(bank), "job_id": None, "status": None, "links": {},
    }
    # read after the write: a prepare job that set "ready" later measures these itself
    current = store.get_model(model_id)
    if current.get("status") == ModelStatus.READY and any(
        f["status"] == FactStatus.PENDING for f in bank
    ):
        job = measure(store, queue, who, current, "pending")
        out.update(job_id=job["id"], status=job["status"], links={"job": f"/v1/jobs/{job['id']}"})
    logger.info("model %s: %d fact(s) added to the retain bank, %d already there",
                model_id, len(added), len(existing))
    return out


def measure(
    store: ArtifactStore, queue: JobQueue, who: Principal, model: dict[str, Any], scope: str
) -> dict[str, Any]:
    """Queue a "retain" job: measure the bank's pending (or all) facts on the active
    version. No text goes through Redis: the worker reads the bank from the store."""
    sub = Submission(JobKind.RETAIN, model["id"], model["active_version"], (model["id"], scope))
    return submit_job(store, queue, who, sub)


def list_facts(
    store: ArtifactStore, who: Principal, model: dict[str, Any], include_text: bool
) -> dict[str, Any]:
    """The bank: ids, hashes, statuses; the text only for an admin who asks for it."""
    if include_text and not who.at_least("admin"):
        raise Forbidden(f"include_text needs the admin role; key {who.key_id} is {who.role}")
    bank = store.retain.facts(model["id"])
    if include_text:
        store.audit.append(who.key_id, "retain.text_read", ids={"model": model["id"]},
                           detail={"facts": len(bank)})
    shown = bank if include_text else [public(f) for f in bank]
    return {"model_id": model["id"], "counts": counts(bank), "facts": shown}


def remove_fact(
    store: ArtifactStore, who: Principal, model: dict[str, Any], fact_id: str
) -> dict[str, Any]:
    """Take one fact out of the bank (404 when it is not there); audited by hash."""
    removed = store.retain.remove(model["id"], [fact_id])
    if not removed:
        raise NotFound(f"fact {fact_id!r} is not in the bank of model {model['id']}",
                       kind="retain_fact")
    store.audit.append(who.key_id, "retain.removed", ids={"model": model["id"]},
                       record_hashes=[f["sha256"] for f in removed],
                       detail={"reason": "removed", "facts": len(removed)})
    logger.info("model %s: fact %s removed from the retain bank", model["id"], fact_id)
    return public(removed[0])
