"""Deleting a version's files while its manifest stays.

`delete_version_files` marks the version deleted in the model's lifecycle document
first, then removes its patch (the content-addressed blob, unless a live version shares the
same bytes, plus an object store's local cached copy), its compacted patch and its
exports. A crash in
between leaves a version marked deleted with some files left; calling it again (DELETE
is idempotent) removes the rest. The manifest is never touched, so lineage, receipts
and the audit trail still resolve. Which versions may be deleted is the caller's rule
(app.version_admin): never v0, never the active version, never one a live version
still needs.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from store.compaction import delete_compacted
from store.lifecycle import version_entry
from store.sealing import delete_exports
from store.versions import PATCH_FILE, patch_key

if TYPE_CHECKING:
    from store.artifacts import ArtifactStore

DELETED = "version.deleted"
"""Audit action: a version's files were removed (its manifest stays)."""


def delete_version_files(
    store: ArtifactStore, actor: str, model_id: str, version: str
) -> dict[str, Any]:
    """Remove the version's patch, compacted patch and exports; keep its manifest,
    marked deleted. Returns {"removed": [what went], "first": True on the first call}."""
    manifest = store.get_version(model_id, version)
    first = not version_entry(store.lifecycle.read(model_id), version)["deleted"]
    store.lifecycle.mark_deleted(model_id, version, actor)
    removed: list[str] = []
    if _delete_patch(store, model_id, version, manifest):
        removed.append("patch")
    if delete_compacted(store, model_id, version):
        removed.append("compacted_patch")
    if delete_exports(store, model_id, version):
        removed.append("exports")
    if first or removed:
        store.audit.append(actor, DELETED, ids={"model": model_id, "version": version},
                           detail={"removed": removed})
    return {"removed": removed, "first": first}


def _delete_patch(
    store: ArtifactStore, model_id: str, version: str, manifest: dict[str, Any]
) -> bool:
    found = False
    if store.shared:  # the object store's local cached copy
        with contextlib.suppress(FileNotFoundError):
            (store.root / "models" / model_id / "versions" / version / PATCH_FILE).unlink()
            found = True
    sha256 = (manifest.get("patch") or {}).get("sha256")
    if sha256:
        object_key = patch_key(model_id, sha256)
        lifecycle = store.lifecycle.read(model_id)
        shared_with = [
            m["id"] for m in store.list_versions(model_id)
            if m["id"] != version and (m.get("patch") or {}).get("sha256") == sha256
            and not version_entry(lifecycle, m["id"])["deleted"]
        ]
        if not shared_with and store.backend.exists(object_key):
            store.backend.delete(object_key)
            found = True
    return found
