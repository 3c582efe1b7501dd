"""Sealing: which versions still hold a deletion's records, judged by lineage.

A forget version D (any version with a parent) deleted its records from every version
that descends from it, D included. Every other version of the model still holds them:
D's base, the base's ancestors, and versions on other branches, including branches
made later from a version without D's edit. Those versions are sealed by D. Nothing is
probed: the manifests' parent chains decide, so the answer is the same on every machine
and for every later reader.

`seal_model` (the worker calls it when a forget has published its version) records
the seals in the model's lifecycle document, deletes the exports of sealed versions,
and writes one `version.sealed` audit entry naming what was sealed now.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from store.artifacts import ArtifactStore

logger = logging.getLogger(__name__)

SEALED = "version.sealed"
"""Audit action: versions sealed by a deletion (ids: model, version = the deletion)."""


def parents_of(manifests: list[dict[str, Any]]) -> dict[str, str | None]:
    """Version id -> parent id, from the manifests."""
    return {m["id"]: m.get("parent") for m in manifests}


def chain_of(parents: dict[str, str | None], version: str) -> list[str]:
    """Version ids from the root down to `version` (stops at an unknown parent or a
    cycle, which publish_version never lets in)."""
    chain: list[str] = []
    current: str | None = version
    while current is not None and current in parents and current not in chain:
        chain.append(current)
        current = parents[current]
    return chain[::-1]


def jobs_of(manifest: dict[str, Any]) -> list[str]:
    """The forget jobs a version served (a coalesced edit serves several)."""
    jobs = manifest.get("jobs") or ([manifest["job_id"]] if manifest.get("job_id") else [])
    return [str(j) for j in jobs]


def compute_seals(manifests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{version: [{"version": D, "jobs": [...]}]} for every version lacking the edit of
    a forget version D (a version is never sealed by itself or by its own ancestors)."""
    parents = parents_of(manifests)
    carries = {v: set(chain_of(parents, v)) for v in parents}
    seals: dict[str, list[dict[str, Any]]] = {}
    for deletion in manifests:
        if deletion.get("parent") is None:  # v0 deleted nothing
            continue
        for version in parents:
            if deletion["id"] not in carries[version]:
                seals.setdefault(version, []).append(
                    {"version": deletion["id"], "jobs": jobs_of(deletion)})
    return seals


def seal_model(store: ArtifactStore, actor: str, model_id: str, version: str) -> dict[str, Any]:
    """Seal every version that lacks an edit it should carry, now that `version` is
    published; delete the sealed versions' exports; audit what changed. Returns
    {"sealed": {version: [deleting versions added now]}, "exports_deleted": [...]}."""
    manifests = store.list_versions(model_id)
    seals = compute_seals(manifests)
    added = store.lifecycle.add_seals(model_id, seals)
    removed = [v for v in sorted(seals) if delete_exports(store, model_id, v)]
    if added or removed:
        by_id = {m["id"]: m for m in manifests}
        store.audit.append(
            actor, SEALED,
            ids={"model": model_id, "version": version},
            detail={"sealed": added, "exports_deleted": removed,
                    "jobs": jobs_of(by_id.get(version, {}))},
        )
        logger.info("model %s: %d version(s) sealed by %s, %d export(s) deleted",
                    model_id, len(added), version, len(removed))
    return {"sealed": added, "exports_deleted": removed}


def delete_exports(store: ArtifactStore, model_id: str, version: str) -> bool:
    """Remove every export of a version (the local directory and, with an object store,
    its objects). True when something was there."""
    found = False
    local = store.root / "exports" / model_id / version
    if local.exists():
        found = True
        shutil.rmtree(local, ignore_errors=True)
    if store.shared:
        for key in store.backend.list_keys(f"exports/{model_id}/{version}/"):
            found = True
            store.backend.delete(key)
    return found
