"""The version lifecycle in SQL: store.lifecycle's per-model document (seals, deletion
marks, compactions, overrides), one row per model, changed under the row's lock. The
change functions are store.lifecycle's rules, applied to the same document shape."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update

from store.documents import utc_now
from store.errors import NotFound
from store.lifecycle import version_entry
from store.sql.engine import Database
from store.sql.repositories.common import insert_if_absent, thaw
from store.sql.schema import Lifecycle, Model

Change = Callable[[dict[str, Any]], dict[str, Any] | None]


def _empty() -> dict[str, Any]:
    return {"versions": {}, "overrides": []}


class LifecycleRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self, model_id: str) -> dict[str, Any]:
        """The model's lifecycle document (an empty one when nothing happened yet)."""
        with self.db.read() as s:
            doc = s.scalar(select(Lifecycle.doc).where(Lifecycle.model_id == str(model_id)))
        return thaw(doc) if doc is not None else _empty()

    def _change(self, model_id: str, change: Change) -> dict[str, Any]:
        with self.db.write() as s:
            if s.scalar(select(Model.id).where(Model.id == str(model_id))) is None:
                raise NotFound(f"model {model_id!r} not found", kind="model")
            insert_if_absent(s, Lifecycle, {"model_id": model_id,
                                                      "updated_at": utc_now(), "doc": _empty()})
            # the row is there: inserted just now or before
            doc = thaw(s.scalars(select(Lifecycle.doc).where(Lifecycle.model_id == model_id)
                                 .with_for_update()).one())
            doc.setdefault("versions", {})
            doc.setdefault("overrides", [])
            new = change(doc)
            if new is None:
                return doc
            s.execute(update(Lifecycle).where(Lifecycle.model_id == model_id)
                      .values(doc=new, updated_at=utc_now()))
            return new

    def add_seals(
        self, model_id: str, seals: dict[str, builtins.list[dict[str, Any]]]
    ) -> dict[str, builtins.list[str]]:
        """Record seals {version: [{"version": deleting version, "jobs": [...]}]}; each
        (version, deleting version) pair once. Returns the pairs added just now."""
        added: dict[str, builtins.list[str]] = {}
        now = utc_now()

        def change(doc: dict[str, Any]) -> dict[str, Any] | None:
            added.clear()
            for version, wanted in seals.items():
                have = doc["versions"].setdefault(version, {}).setdefault("sealed_by", [])
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

    def overrides(self, model_id: str) -> builtins.list[dict[str, Any]]:
        """Every override of a seal on the model, oldest first."""
        return list(self.read(model_id).get("overrides", []))
