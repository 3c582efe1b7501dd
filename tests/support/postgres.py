"""A real PostgreSQL server for the tests: the one ZEROUNLEARN_TEST_POSTGRES_URL names,
else a throwaway one started here with Debian's initdb and pg_ctl.

The throwaway server lives in a temporary directory on a free port, listening on
127.0.0.1 only, trust authentication (nothing else can reach it), fsync off (the tests
do not survive power cuts). PostgreSQL refuses to run as root: then the directory is
given to the `postgres` user and the binaries run through `runuser -u postgres --`.
No binaries is a failure with a clear message, never a silent skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

POSTGRES_URL_ENV = "ZEROUNLEARN_TEST_POSTGRES_URL"
"""A server to use instead of starting one (its role needs CREATEDB)."""
BIN_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60


@dataclass
class PostgresServer:
    """A server the tests may create databases on."""

    url: str  # SQLAlchemy URL of its maintenance database
    data_dir: Path | None = None  # set when this module started the server
    created: list[str] = field(default_factory=list)

    def url_for(self, name: str) -> str:
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def _admin(self) -> psycopg.Connection:
        conninfo = make_url(self.url).set(drivername="postgresql")
        return psycopg.connect(conninfo.render_as_string(hide_password=False),
                               autocommit=True)

    def create_database(self, template: str | None = None) -> str:
        """A new empty database (a copy of `template` when given); returns its URL."""
        name = f"zu_{uuid.uuid4().hex[:12]}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self._admin() as conn:
            conn.execute(query)
        self.created.append(name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))
        with contextlib.suppress(ValueError):
            self.created.remove(name)

    def checkpoint(self) -> None:
        """Write every dirty page to the data files (so a search of them is complete)."""
        with self._admin() as conn:
            conn.execute("CHECKPOINT")


def _bin_dir() -> Path:
    found = sorted(glob.glob(BIN_GLOB), key=lambda p: int(Path(p).parent.name)
                   if Path(p).parent.name.isdigit() else 0)
    found = [d for d in found if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists()]
    if not found:
        pytest.fail(f"PostgreSQL binaries not found ({BIN_GLOB}/initdb): install Debian's "
                    f"`postgresql` package (.ci/run does) or set {POSTGRES_URL_ENV}",
                    pytrace=False)
    return Path(found[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], as_postgres: bool) -> None:
    if as_postgres:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name if not as_postgres else argv[4]} failed: "
                           f"{(done.stderr or done.stdout)[-2000:]}")


@contextlib.contextmanager
def own_server() -> Iterator[PostgresServer]:
    """Start a throwaway server; stop it and remove its files at the end."""
    bin_dir = _bin_dir()
    as_postgres = os.getuid() == 0
    root = Path(tempfile.mkdtemp(prefix="zu-pg-"))  # not under pytest's 0700 root-only dirs
    data, log = root / "data", root / "server.log"
    if as_postgres:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            pytest.fail("running as root, PostgreSQL needs a `postgres` user to run as "
                        "(Debian's `postgresql` package creates it)", pytrace=False)
        os.chown(root, user.pw_uid, user.pw_gid)
    port = _free_port()
    options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
               "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
              "-E", "UTF8", "--no-sync", "--no-instructions"], as_postgres)
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
              "-t", str(START_TIMEOUT_S), "-o", options, "start"], as_postgres)
        try:
            yield PostgresServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
                                 data)
        finally:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                 as_postgres)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The tests' server (module docstring); databases made on an external one are
    dropped at the end."""
    external = os.environ.get(POSTGRES_URL_ENV)
    if not external:
        with own_server() as server:
            yield server
        return
    server = PostgresServer(external)
    try:
        yield server
    finally:
        for name in list(server.created):
            with contextlib.suppress(psycopg.Error):
                server.drop_database(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (module docstring)."""
    with postgres_server() as server:
        yield server


TEST_DATABASE_ENV = "ZEROUNLEARN_TEST_DATABASE"
"""Which database the service test stacks use: "sqlite" (default) or "postgresql"."""


class _Shared:
    """One server for every stack of a test process, stopped when the process exits."""

    stack: contextlib.ExitStack | None = None
    server: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The test process's PostgreSQL server (started on first use)."""
    if _Shared.server is None:
        import atexit

        _Shared.stack = contextlib.ExitStack()
        _Shared.server = _Shared.stack.enter_context(postgres_server())
        atexit.register(_Shared.stack.close)
    return _Shared.server


def fresh_database_url() -> str | None:
    """A fresh database for one service stack (ZEROUNLEARN_TEST_DATABASE=postgresql);
    None for the default, SQLite in the stack's data directory."""
    choice = os.environ.get(TEST_DATABASE_ENV, "sqlite").strip().lower()
    if choice in ("", "sqlite"):
        return None
    if choice != "postgresql":
        pytest.fail(f"{TEST_DATABASE_ENV} must be sqlite or postgresql", pytrace=False)
    return shared_server().create_database()
