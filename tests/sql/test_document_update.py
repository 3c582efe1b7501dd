"""One update for model and job documents (store.sql.repositories.common.update_document):
the same rules for both kinds, and the row's queried columns follow the document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from store import InvalidDocument, NotFound
from store.sql import SqlMetadata
from store.sql.repositories import JobRepository, ModelRepository
from store.sql.schema import Job, Model


@dataclass(frozen=True)
class Kind:
    name: str
    table: type[Model] | type[Job]
    new: dict[str, Any]  # a document to create
    status: str  # a status the new document can move to
    unknown: str  # a well-formed id nothing has

    def repository(self, meta: SqlMetadata) -> ModelRepository | JobRepository:
        return meta.models if self.table is Model else meta.jobs


KINDS = [
    Kind("model", Model, {"name": "a", "source": "builtin:x"}, "ready", "m-ffffffffffff"),
    Kind("job", Job, {"kind": "forget", "model_id": "m-000000000001"}, "running",
         "j-ffffffffffffffff"),
]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    chosen: Kind = request.param
    return chosen


def _status_column(meta: SqlMetadata, kind: Kind, doc_id: str) -> str | None:
    with meta.db.read() as s:
        return s.scalar(select(kind.table.status).where(kind.table.id == doc_id))


def test_update_writes_the_document_and_its_row(meta: SqlMetadata, kind: Kind) -> None:
    repo = kind.repository(meta)
    doc = repo.create(kind.new)
    updated = repo.update(doc["id"], status=kind.status, note={"n": 1})
    assert updated == {**doc, "status": kind.status, "note": {"n": 1}}
    assert repo.get(doc["id"]) == updated
    # the indexed column that lists and counts filter on follows the document
    assert _status_column(meta, kind, doc["id"]) == kind.status
    updated["note"]["n"] = 2  # a copy: changing it changes nothing stored
    assert repo.get(doc["id"])["note"] == {"n": 1}


def test_update_refuses_id_and_unknown_status_and_writes_nothing(
    meta: SqlMetadata, kind: Kind
) -> None:
    repo = kind.repository(meta)
    doc = repo.create(kind.new)
    with pytest.raises(InvalidDocument, match=f"a {kind.name}'s id cannot change"):
        repo.update(doc["id"], id=kind.unknown, status=kind.status)
    with pytest.raises(InvalidDocument, match=f"{kind.name} status must be one of"):
        repo.update(doc["id"], status="half-done")
    assert repo.get(doc["id"]) == doc
    assert _status_column(meta, kind, doc["id"]) == doc["status"]


def test_update_of_a_missing_document_names_its_kind(meta: SqlMetadata, kind: Kind) -> None:
    with pytest.raises(NotFound) as caught:
        kind.repository(meta).update(kind.unknown, status=kind.status)
    assert caught.value.kind == kind.name
    assert str(caught.value) == f"{kind.name} {kind.unknown!r} not found"
