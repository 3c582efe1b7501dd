"""Small helpers the repositories share: dialect-neutral insert-if-absent, and copies of
stored JSON (so a caller changing a returned document never changes the session's), and
the field update of a model or job document."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Session

from store.errors import InvalidDocument, NotFound
from store.sql.engine import Database
from store.sql.schema import Doc, Job, Model

T = TypeVar("T")


def insert_if_absent(
    session: Session, model: type[DeclarativeBase], values: dict[str, Any]
) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: True when the row was inserted, False when a
    row with the same primary key (or unique column) was already there. Never raises
    for the conflict, so a PostgreSQL transaction is not aborted by it."""
    table = cast(Table, model.__table__)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    # RETURNING tells inserted from skipped (psycopg reports no rowcount for it)
    statement = insert(table).values(**values).on_conflict_do_nothing()
    key = list(table.primary_key.columns)[0]
    return session.execute(statement.returning(key)).first() is not None


def thaw(doc: T) -> T:
    """A deep copy of a stored JSON value."""
    return copy.deepcopy(doc)


def update_document(
    db: Database,
    table: type[Model] | type[Job],
    doc_id: str,
    fields: dict[str, Any],
    *,
    kind: str,
    check_status: Callable[[Any], None],
    row: Callable[[Doc], dict[str, Any]],
) -> Doc:
    """Change fields of a `kind` ("model", "job") document in one transaction, under its
    row's lock; the new document. The id cannot change; a status must be one of the
    kind's (`check_status`); `row` gives the row's columns for a document."""
    if "id" in fields:
        raise InvalidDocument(f"a {kind}'s id cannot change")
    if "status" in fields:
        check_status(fields["status"])
    with db.write() as s:
        doc = s.scalar(select(table.doc).where(table.id == str(doc_id)).with_for_update())
        if doc is None:
            raise NotFound(f"{kind} {doc_id!r} not found", kind=kind)
        new = {**doc, **fields}
        s.execute(update(table).where(table.id == doc_id).values(row(new)))
    return thaw(new)
