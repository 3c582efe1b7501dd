"""What happened to a model's versions after they were published: sealed, deleted,
compacted, and the admin overrides of a seal.

Versions are immutable, so this state lives beside them in one small mutable document
per model, `models/{model_id}/lifecycle.json`, changed only by atomic read-modify-write:

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

from store.backends.base import ObjectBackend
from store.documents import utc_now
from store.errors import NotFound
from store.objects import dump, load

LIFECYCLE_FILE = "lifecycle.json"


def lifecycle_key(model_id: str) -> str:
    return f"models/{model_id}/{LIFECYCLE_FILE}"


def _empty() -> dict[str, Any]:
    return {"versions": {}, "overrides": []}


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


class VersionLifecycle:
    """Reads and atomic updates of the per-model lifecycle document."""

    def __init__(self, backend: ObjectBackend) -> None:
        self.backend = backend

    def read(self, model_id: str) -> dict[str, Any]:
        """The model's lifecycle document (an empty one when nothing happened yet)."""
        key = lifecycle_key(model_id)
        blob = self.backend.read(key)
        return load(blob.data, key) if blob is not None else _empty()

    def _change(self, model_id: str, change: Any) -> dict[str, Any]:
        key = lifecycle_key(model_id)
        written: list[dict[str, Any]] = []

        def on_bytes(data: bytes | None) -> bytes | None:
            doc = load(data, key) if data is not None else _empty()
            doc.setdefault("versions", {})
            doc.setdefault("overrides", [])
            new = change(doc)
            written[:] = [new if new is not None else doc]
            return dump(new) if new is not None else None

        self.backend.update(key, on_bytes)
        return written[0]

    def add_seals(
        self, model_id: str, seals: dict[str, list[dict[str, Any]]]
    ) -> dict[str, list[str]]:
        """Record seals {version: [{"version": deleting version, "jobs": [...]}]}; each
        (version, deleting version) pair once. Returns the pairs added just now,
        {version: [deleting versions]}."""
        added: dict[str, list[str]] = {}
        now = utc_now()

        def change(doc: dict[str, Any]) -> dict[str, Any] | None:
            added.clear()
            for version, wanted in seals.items():
                entry = doc["versions"].setdefault(version, {})
                have = entry.setdefault("sealed_by", [])
                known = {s["version"] for s in have}
                for seal in wanted:
                    if seal["version"] not in known:
                        have.append({"version": seal["version"], "jobs": list(seal["jobs"]),
                                     "at": now})
                        known.add(seal["version"])
                        added.setdefault(version, []).append(seal["version"])
            return doc if added else None

        self._change(model_id, change)
        return {version: list(by) for version, by in added.items()}

    def mark_deleted(self, model_id: str, version: str, actor: str) -> dict[str, Any]:
        """Mark a version deleted (once: a second call keeps the first mark)."""

        def change(doc: dict[str, Any]) -> dict[str, Any] | None:
            entry = doc["versions"].setdefault(version, {})
            if entry.get("deleted"):
                return None
            entry["deleted"] = {"at": utc_now(), "by": actor}
            return doc

        return version_entry(self._change(model_id, change), version)

    def set_compacted(self, model_id: str, version: str, info: dict[str, Any]) -> None:
        """Record the version's compacted patch (replacing an older compaction's)."""

        def change(doc: dict[str, Any]) -> dict[str, Any] | None:
            entry = doc["versions"].setdefault(version, {})
            if entry.get("deleted"):
                raise NotFound(f"version {version} of model {model_id} was deleted",
                               kind="version")
            entry["compacted"] = {**info, "at": utc_now()}
            return doc

        self._change(model_id, change)

    def add_override(self, model_id: str, override: dict[str, Any]) -> None:
        """Append an admin's override of a seal (already in the audit trail)."""

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            doc["overrides"].append(dict(override))
            return doc

        self._change(model_id, change)

    def overrides(self, model_id: str) -> list[dict[str, Any]]:
        """Every override of a seal on the model, oldest first."""
        return list(self.read(model_id).get("overrides", []))
