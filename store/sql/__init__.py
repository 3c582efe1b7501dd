"""Metadata in SQL: models, versions, jobs, API keys, idempotency records, the audit
trail, accepted requests and the version lifecycle, in one database (SQLAlchemy 2).

SQLite (a file in the data directory) by default; PostgreSQL (psycopg 3) when several
machines share the service. The schema is created only by the Alembic migrations in
store/sql/migrations (store.sql.migrate.upgrade). Blobs (patches, statistics, exports)
stay on the object backend; request text is stored only sealed (store.datakeys).

No torch, no web or queue import: the API and the CLI use it.
"""

from store.sql.engine import DATABASE_URL_ENV, Database, default_url, make_engine, safe_url
from store.sql.metadata import SqlMetadata

__all__ = [
    "DATABASE_URL_ENV",
    "Database",
    "SqlMetadata",
    "default_url",
    "make_engine",
    "safe_url",
]
