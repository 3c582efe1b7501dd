"""Bring a database to the newest schema: `upgrade(url)` (Alembic, from code; the
migration scripts are in store/sql/migrations). The only way the schema is created."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL, make_url

from store.sql.engine import make_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic configuration without an alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """The newest revision of the migration scripts."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Migrate the database of `engine` to `revision`."""
    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (default: the newest)."""
    engine = make_engine(url)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def ensure_schema(url: str | URL) -> None:
    """Migrate the database at `url` to the newest schema, once per process and URL
    (the API and the worker call it at start-up; ArtifactStore on first use).

    Concurrent starts are safe: PostgreSQL migrations take an advisory lock
    (migrations/env.py); SQLite ones an flock on `<database>.migrate-lock`, and a
    process that waited finds the schema at head and does nothing."""
    key = make_url(url).render_as_string(hide_password=False)
    with _migrated_lock:
        if key in _migrated:
            return
        engine = make_engine(url)
        try:
            if _revision(engine) != head():
                with _sqlite_migration_lock(engine):
                    if _revision(engine) != head():
                        upgrade_engine(engine)
        finally:
            engine.dispose()
        _migrated.add(key)


def _revision(engine: Engine) -> str | None:
    # read alembic's table directly: MigrationContext would log two INFO lines at every
    # start of every process for a check that usually finds the schema at head
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


class _sqlite_migration_lock:  # noqa: N801 (a context manager, used like a function)
    def __init__(self, engine: Engine) -> None:
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self.path = f"{database}.migrate-lock" if database and database != ":memory:" \
            else None
        self.fd: int | None = None

    def __enter__(self) -> None:
        if self.path is not None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock


def current(url: str | URL) -> str | None:
    """The revision the database at `url` is at (None: never migrated)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
