"""`exclusive(db, name)`: a named lock over every process of every machine using the
database, taken without waiting (e.g. one reconciler pass at a time).

PostgreSQL: a session advisory lock (pg_try_advisory_lock) on a connection held for the
block; the server drops it when the holder's connection ends, so a crashed holder never
leaves it taken (no lease, no clock). SQLite serves one machine: an flock on a file
beside the database (`<database>.lock-<name>`), which the kernel drops when the holding
process dies. Neither needs a table or a time-to-live.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import text

from store.sql.engine import Database

NAME_RE = re.compile(r"^[a-z0-9_.-]{1,64}$")


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (PostgreSQL's advisory lock space)."""
    digest = hashlib.sha256(f"zerounlearn:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def exclusive(db: Database, name: str) -> Iterator[bool]:
    """True when this process now holds `name` for the block; False when another does."""
    if not NAME_RE.match(name):
        raise ValueError(f"bad lock name {name!r}")
    if db.dialect == "postgresql":
        with _advisory(db, advisory_key(name)) as mine:
            yield mine
    else:
        with _file_lock(db, name) as mine:
            yield mine


@contextlib.contextmanager
def _advisory(db: Database, key: int) -> Iterator[bool]:
    with db.engine.connect() as conn:
        mine = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
        conn.commit()
        try:
            yield mine
        finally:
            if mine:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


@contextlib.contextmanager
def _file_lock(db: Database, name: str) -> Iterator[bool]:
    database = db.url.database
    if not database or database == ":memory:":
        yield True  # one process owns an in-memory database
        return
    path = Path(f"{database}.lock-{name}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
