"""Models and their immutable versions, in SQL (what ArtifactStore's model and version
methods do on documents). Patch blobs stay on the object backend: a manifest's "patch"
entry ({"bytes", "sha256", "layers"}) is their reference."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import and_, func, insert, or_, select

from store.documents import (
    MODEL_ID_RE,
    VERSION_RE,
    check_model_status,
    manifest_defaults,
    new_model_id,
    utc_now,
    version_number,
)
from store.enums import ModelStatus
from store.errors import Conflict, InvalidDocument, NotFound
from store.sql.engine import Database
from store.sql.repositories.common import insert_if_absent, thaw, update_document
from store.sql.schema import Model, Version


def _missing_model(model_id: Any) -> NotFound:
    return NotFound(f"model {model_id!r} not found", kind="model")


def _missing_version(model_id: str, version: Any) -> NotFound:
    return NotFound(f"version {version!r} of model {model_id} not found", kind="version")


class ModelRepository:
    """Model documents: create, get, list (oldest first), update."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store a new model document; fills id, defaults and created_at when absent."""
        for key in ("name", "source"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise InvalidDocument(f"model document needs a non-empty string {key!r}")
        model = {
            "id": doc.get("id") or new_model_id(), "architecture": None, "num_layers": None,
            "edit_layers": None, "dtype": "float32", "active_version": "v0",
            "status": ModelStatus.PREPARING, "error": None, "created_at": utc_now(),
            **{k: v for k, v in doc.items() if k != "id"},
        }
        check_model_status(model["status"])
        if not isinstance(model["id"], str) or not MODEL_ID_RE.match(model["id"]):
            raise InvalidDocument("a model id is 'm-' and 12 hex digits")
        with self.db.write() as s:
            if not insert_if_absent(s, Model, model_row(model)):
                raise Conflict(f"model {model['id']} already exists")
        return model

    def get(self, model_id: str) -> dict[str, Any]:
        """The model document; NotFound when there is none."""
        with self.db.read() as s:
            doc = s.scalar(select(Model.doc).where(Model.id == str(model_id)))
        if doc is None:
            raise _missing_model(model_id)
        return thaw(doc)

    def list(
        self, *, limit: int | None = None, after: tuple[str, str] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Models oldest first; at most `limit`, those after the keyset cursor `after`
        ((created_at, id) of the last model of the previous page)."""
        query = select(Model.doc)
        if after is not None:
            created, last_id = after
            query = query.where(or_(Model.created_at > created,
                                    and_(Model.created_at == created, Model.id > last_id)))
        query = query.order_by(Model.created_at, Model.id)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as s:
            return [thaw(d) for d in s.scalars(query)]

    def update(self, model_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields of a model in one transaction; returns the new document."""
        return update_document(self.db, Model, model_id, fields, kind="model",
                               check_status=check_model_status, row=model_row)


def model_row(model: dict[str, Any]) -> dict[str, Any]:
    return {"id": model["id"], "status": model["status"],
            "created_at": model.get("created_at") or "", "doc": model}


class VersionRepository:
    """Immutable versions: the next number is claimed and the manifest published in one
    transaction (the model's row is locked meanwhile), so numbers are distinct and dense."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def publish(self, model_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Publish a manifest under the next free vN and return it (its id set here).
        A "patch" entry must already describe an uploaded blob ({"bytes", "sha256", ...});
        only record hashes may be stored (manifest_defaults checks)."""
        doc = manifest_defaults(manifest)
        patch = doc.get("patch")
        if patch is not None and not (isinstance(patch, dict) and "sha256" in patch):
            raise InvalidDocument("a manifest's patch must give the blob's sha256")
        with self.db.write() as s:
            if s.scalar(select(Model.id).where(Model.id == str(model_id))
                        .with_for_update()) is None:
                raise _missing_model(model_id)
            if doc["parent"] is not None and s.get(
                    Version, (model_id, version_number(doc["parent"]))) is None:
                raise _missing_version(model_id, doc["parent"])
            last = s.scalar(select(func.max(Version.number))
                            .where(Version.model_id == model_id))
            doc["id"] = f"v{0 if last is None else last + 1}"
            s.execute(insert(Version).values(version_row(model_id, doc)))
        return thaw(doc)

    def get(self, model_id: str, version: str) -> dict[str, Any]:
        """A version's manifest; NotFound for an unknown model or version."""
        number = version_number(version) if isinstance(version, str) else None
        with self.db.read() as s:
            if s.scalar(select(Model.id).where(Model.id == str(model_id))) is None:
                raise _missing_model(model_id)
            manifest = None if number is None else s.scalar(
                select(Version.manifest).where(Version.model_id == model_id,
                                               Version.number == number))
        if manifest is None:
            raise _missing_version(model_id, version)
        return thaw(manifest)

    def list(
        self, model_id: str, *, limit: int | None = None, after: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Versions of a model, v0 first; at most `limit`, those numbered above `after`."""
        query = select(Version.manifest).where(Version.model_id == model_id)
        if after is not None:
            query = query.where(Version.number > after)
        query = query.order_by(Version.number)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as s:
            if s.scalar(select(Model.id).where(Model.id == str(model_id))) is None:
                raise _missing_model(model_id)
            rows = s.scalars(query)
            return [thaw(m) for m in rows]

    def numbers(self, model_id: str) -> builtins.list[int]:
        """The N of every vN of a model, ascending; no manifest is read."""
        with self.db.read() as s:
            if s.scalar(select(Model.id).where(Model.id == str(model_id))) is None:
                raise _missing_model(model_id)
            return list(s.scalars(select(Version.number).where(Version.model_id == model_id)
                                  .order_by(Version.number)))


def version_row(model_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
    if not VERSION_RE.match(str(manifest.get("id"))):
        raise InvalidDocument("a version id is 'v' and a number")
    patch = manifest.get("patch")
    return {"model_id": model_id, "number": version_number(manifest["id"]),
            "created_at": manifest.get("created_at") or "", "job_id": manifest.get("job_id"),
            "patch_sha256": patch.get("sha256") if isinstance(patch, dict) else None,
            "manifest": manifest}
