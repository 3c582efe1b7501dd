"""Small helpers the repositories share: dialect-neutral insert-if-absent, and copies of
stored JSON (so a caller changing a returned document never changes the session's)."""

from __future__ import annotations

import copy
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Session


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


def thaw(doc: Any) -> Any:
    """A deep copy of a stored JSON value."""
    return copy.deepcopy(doc)
