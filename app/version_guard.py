"""Sealed and deleted versions at the door: 409 unless an admin overrides a seal.

A sealed version (store.sealing: it still holds records a later forget deleted) refuses
generate, export, verify, activate, compact and use as a forget's base_version with 409
`version_sealed`. An admin may let one call through by sending the query parameter
`override_seal_reason` (1-500 characters, e.g. "legal hold 2025-14"): the override is
appended to the audit trail (`version.seal_overridden`, with the action, the reason and
the requests that sealed the version) and to the model's lifecycle document, where
receipts read it (`seal_overrides`). The parameter is ignored on a version that is not
sealed. A deleted version (DELETE on it) refuses the same calls with 409
`version_deleted`, which nothing overrides: its files are gone.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Query

from app.auth import Principal
from app.errors import ConflictError, Forbidden, InvalidInput
from store import ArtifactStore
from store.lifecycle import public_state

logger = logging.getLogger(__name__)

OVERRIDDEN = "version.seal_overridden"
"""Audit action: an admin used a sealed version, with a stated reason."""
MAX_REASON_CHARS = 500

SealOverride = Annotated[
    str | None,
    Query(
        alias="override_seal_reason",
        min_length=1,
        max_length=MAX_REASON_CHARS,
        description="Admin only: use a sealed version anyway, for this call; the reason "
        "(e.g. a legal hold, an incident rollback) is audited and named in later receipts.",
    ),
]


def check_usable(
    store: ArtifactStore,
    who: Principal,
    model_id: str,
    version: str,
    action: str,
    reason: str | None,
) -> dict[str, Any] | None:
    """Refuse a deleted or sealed version (409); with an admin's reason, record the
    override and return it. None when the version is simply usable."""
    store.get_version(model_id, version)  # 404 first
    state = public_state(store.lifecycle.read(model_id), version)
    if state["deleted"]:
        raise ConflictError(
            f"version {version} of model {model_id} was deleted (its files are gone); "
            "use another version",
            code="version_deleted",
        )
    if not state["sealed"]:
        return None
    jobs = state["sealed_by"]
    if reason is None:
        raise ConflictError(
            f"version {version} of model {model_id} is sealed: it still holds records "
            f"that forget request(s) {', '.join(jobs)} deleted; an admin may override "
            "with the query parameter override_seal_reason",
            code="version_sealed",
            extra={"sealed_by": jobs},
        )
    if not who.at_least("admin"):
        raise Forbidden(f"overriding the seal of version {version} needs the admin role; "
                        f"key {who.key_id} is {who.role}")
    reason = reason.strip()
    if not reason:
        raise InvalidInput("override_seal_reason: state a reason (not only spaces)")
    entry = store.audit.append(
        who.key_id, OVERRIDDEN, ids={"model": model_id, "version": version},
        detail={"action": action, "reason": reason, "sealed_by": jobs},
    )
    override = {"version": version, "action": action, "reason": reason,
                "actor": who.key_id, "at": entry["time"], "audit_seq": entry["seq"],
                "sealed_by": jobs}
    store.lifecycle.add_override(model_id, override)
    logger.warning("model %s: admin key %s overrode the seal of %s for %s (audit seq %d)",
                   model_id, who.key_id, version, action, entry["seq"])
    return override


def seal_overrides(store: ArtifactStore, model_id: str) -> list[dict[str, Any]]:
    """Every override of a seal on the model, oldest first: {version, action, reason,
    actor, at, audit_seq, sealed_by}. Receipts name these."""
    return store.lifecycle.overrides(model_id)


def seal_overrides_of(store: ArtifactStore, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The overrides that used a version sealed by this forget job (its records were
    still in it): what the job's receipt names, {version, action, reason, actor, at,
    audit_seq}, oldest first."""
    return [{k: o.get(k) for k in ("version", "action", "reason", "actor", "at", "audit_seq")}
            for o in seal_overrides(store, job["model_id"])
            if job["id"] in (o.get("sealed_by") or [])]


def with_state(
    manifest: dict[str, Any], model: dict[str, Any], lifecycle: dict[str, Any]
) -> dict[str, Any]:
    """A manifest as GET shows it: active, sealed, sealed_by, deleted, compacted..."""
    return {**manifest, "active": manifest["id"] == model["active_version"],
            **public_state(lifecycle, manifest["id"])}
