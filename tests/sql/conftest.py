"""Every test of the SQL layer runs twice: on SQLite (a file in tmp_path) and on a real
PostgreSQL server (tests.support.postgres: a throwaway one unless
ZEROUNLEARN_TEST_POSTGRES_URL names one). A test gets a fresh database, migrated by
store.sql.migrate (copied from a migrated template: one migration per session and
dialect), or an empty one (`empty_url`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from store import ArtifactStore
from store.sql import SqlMetadata
from store.sql.migrate import upgrade
from tests.support.postgres import PostgresServer, postgres  # noqa: F401 (a fixture)

DIALECTS = ("sqlite", "postgresql")


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "metadata.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_template(postgres: PostgresServer) -> str:  # noqa: F811
    url = postgres.create_database()
    upgrade(url)
    return str(make_url(url).database)


@pytest.fixture
def empty_url(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database with no table yet."""
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def db_url(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A migrated database of its own."""
    if dialect == "sqlite":
        path = tmp_path / "db" / "metadata.sqlite3"
        path.parent.mkdir()
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(template=request.getfixturevalue("_postgres_template"))


@pytest.fixture
def objects(tmp_path: Path) -> ArtifactStore:
    """The object side of an installation (data keys, blobs): a local directory."""
    return ArtifactStore(tmp_path / "objects")


@pytest.fixture
def meta(db_url: str, objects: ArtifactStore) -> Iterator[SqlMetadata]:
    sql_meta = SqlMetadata(db_url, objects.data_keys)
    yield sql_meta
    sql_meta.close()
