"""One SQLAlchemy engine from one URL, and transactions that lock the right way.

SQLite (the default, a file in the data directory): WAL (readers never wait for the
writer), foreign keys on, a busy timeout (a second writer waits instead of failing),
synchronous=FULL (a commit survives a power cut: the API answers 202 only once the request
is durable) and secure_delete=ON (deleted or overwritten cells are zeroed in the file).
Write transactions start with BEGIN IMMEDIATE: they take the write lock first, so a
read-then-write never fails half-way with SQLITE_BUSY when another writer got in between.

PostgreSQL (postgresql+psycopg://...): READ COMMITTED; repositories lock the rows they
change with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

DATABASE_URL_ENV = "ZEROUNLEARN_DATABASE_URL"
"""The setting that names the database (unset: SQLite in the data directory)."""

SQLITE_FILE = "metadata.sqlite3"
"""The default database file, under the data directory."""

BUSY_TIMEOUT_MS = 30_000
"""How long an SQLite writer waits for another one before failing ("database is locked")."""

_IMMEDIATE = "zerounlearn_immediate"  # execution option: BEGIN IMMEDIATE on SQLite


def default_url(data_dir: Path | str) -> str:
    """The embedded default: an SQLite file in the data directory."""
    return f"sqlite:///{Path(data_dir).resolve() / SQLITE_FILE}"


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden: the only form that may be logged."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for `url` (sqlite:///path or postgresql+psycopg://...), set up as the
    module docstring says."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            _create_owner_only(Path(parsed.database))
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
                               **kwargs)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(parsed, pool_pre_ping=True, **kwargs)
    log.debug("database engine for %s", safe_url(parsed))
    return engine


def _create_owner_only(path: Path) -> None:
    """Create the database file owner-only (it holds sealed request text and key
    hashes; SQLite gives its -wal and -shm files the same mode). Only when it does not
    exist: opening and closing an existing database file would drop every POSIX lock
    this process's SQLite connections hold on it (fcntl locks belong to the process and
    go with ANY close of the file), and a connection that lost its locks can be left
    reading a deleted -shm file: stale reads."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling off: _sqlite_begin emits BEGIN itself
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in ("journal_mode=WAL", "foreign_keys=ON",
                       f"busy_timeout={BUSY_TIMEOUT_MS}", "synchronous=FULL",
                       "secure_delete=ON"):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Any) -> None:
    immediate = conn.get_execution_options().get(_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """An engine and its transactions: `read()` for reads, `write()` for any change
    (one transaction each, committed on a normal exit, rolled back on an exception)."""

    def __init__(self, url: str | URL, engine: Engine | None = None) -> None:
        self.url = make_url(url)
        self.engine = engine if engine is not None else make_engine(self.url)
        self._writer = self.engine.execution_options(**{_IMMEDIATE: True})

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return self.engine.dialect.name

    def describe(self) -> str:
        """Where the metadata lives, for logs (never the password)."""
        return safe_url(self.url)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    def ping(self) -> None:
        """A round trip to the database (readiness): raises when it does not answer."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        """Close every pooled connection (before a fork, or at the end)."""
        self.engine.dispose()
