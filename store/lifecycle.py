"""What happened to a model's versions after they were published: sealed, deleted,
compacted, and the admin overrides of a seal.

Versions are immutable, so this state lives beside them in one small mutable document
per model (the lifecycle table, store.sql.repositories.lifecycle; old data directories
kept it as models/{model_id}/lifecycle.json), changed in one transaction under the row's
lock:

    {"versions": {"v0": {"sealed_by": [{"version": "v1", "jobs": ["j-..."], "at": ...}],
                         "deleted": {"at", "by"} | null,
                         "compacted": {"patch": {bytes, sha256, layers}, "job_id", "at",
                                       "replaces": ["v1", ...]} | null}},
     "overrides": [{"version", "action", "reason", "actor", "at", "audit_seq"}]}

Seals are only ever added (a version that held a deletion's records never stops holding
them); a deletion mark is final. The document holds ids, hashes and admins' reasons,
never request text.
"""

from __future__ import annotations

from typing import Any


def version_entry(doc: dict[str, Any], version: str) -> dict[str, Any]:
    """The lifecycle entry of one version (defaults when nothing happened to it)."""
    entry = doc.get("versions", {}).get(version) or {}
    return {"sealed_by": list(entry.get("sealed_by") or []),
            "deleted": entry.get("deleted"), "compacted": entry.get("compacted")}


def public_state(doc: dict[str, Any], version: str) -> dict[str, Any]:
    """The fields GET on a version shows: sealed, sealed_by (job ids), sealed_at,
    deleted, deleted_at, compacted."""
    entry = version_entry(doc, version)
    seals = entry["sealed_by"]
    jobs: list[str] = []
    for seal in seals:
        jobs.extend(j for j in seal.get("jobs", []) if j not in jobs)
    deleted = entry["deleted"]
    return {
        "sealed": bool(seals),
        "sealed_by": jobs,
        "sealed_at": min((s["at"] for s in seals), default=None),
        "deleted": deleted is not None,
        "deleted_at": deleted["at"] if deleted else None,
        "compacted": entry["compacted"],
    }
