"""Alembic's environment, driven from code (store.sql.migrate): no alembic.ini.

The connection to migrate comes in config.attributes["connection"]; PostgreSQL takes a
transaction-scoped advisory lock first, so two processes starting at once migrate one
after the other.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from store.sql.schema import metadata

MIGRATION_LOCK = 7_263_114_001
"""The PostgreSQL advisory lock id that serialises migrations."""

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite's ALTER is limited
    compare_type=True,
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
    context.run_migrations()
