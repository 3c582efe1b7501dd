"""The tests' one allocator of Redis databases (tests/support/redis_dbs.py): holders at
the same time never share a number, every test module goes through it, and the server
is the one ZEROUNLEARN_TEST_REDIS_URL names."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from redis import Redis

from tests.support import redis_dbs
from tests.support.redis_dbs import (
    DATABASES,
    TEST_DATABASES,
    DatabaseAllocator,
    DatabasesExhausted,
    configured_base_url,
    redis_db,
)

TESTS = Path(__file__).resolve().parent
HARD_CODED = re.compile(r"127\.0\.0\.1:6379|LOCAL_REDIS|TEST_REDIS_DB|flushed_db\(|_DB = \d")
"""What modules used before the allocator: the machine's server or a number of their own
(a stack's `db=` number is gone from the helpers' signatures: they take a name)."""


def test_holders_at_the_same_time_never_share_a_number() -> None:
    allocator = DatabaseAllocator(TEST_DATABASES)
    with contextlib.ExitStack() as stack:
        numbers = [stack.enter_context(allocator.lease(f"h{i}")) for i in TEST_DATABASES]
        assert sorted(numbers) == list(TEST_DATABASES)
        held = allocator.held()
        assert len(set(held.values())) == len(held) == len(TEST_DATABASES)
        with pytest.raises(DatabasesExhausted, match="h1"):
            stack.enter_context(allocator.lease("one too many"))
    assert allocator.held() == {}


def test_a_number_goes_back_and_a_name_is_held_once() -> None:
    allocator = DatabaseAllocator([3, 4])
    with allocator.lease("a") as first:
        with pytest.raises(ValueError, match="'a'"):
            with allocator.lease("a"):
                pass
        with allocator.lease("b") as second:
            assert {first, second} == {3, 4}
    with allocator.lease("c") as again:
        assert again == 3
    assert 0 not in TEST_DATABASES  # left to whatever else uses the server


def test_leased_databases_are_apart_and_flushed() -> None:
    with redis_db("apart-a") as url_a, redis_db("apart-b") as url_b:
        assert url_a != url_b
        held = DATABASES.held()  # the session's holders too (a live stack, say)
        assert len(set(held.values())) == len(held)
        a, b = Redis.from_url(url_a), Redis.from_url(url_b)
        a.set("k", "a")
        assert b.get("k") is None
        b.close()
    assert "apart-a" not in DATABASES.held()
    assert a.get("k") is None  # flushed on the way out
    a.close()


def test_the_server_is_the_configured_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(redis_dbs.REDIS_URL_ENV, "redis://:pw@127.0.0.1:6390/7")
    assert configured_base_url() == "redis://:pw@127.0.0.1:6390"
    monkeypatch.delenv(redis_dbs.REDIS_URL_ENV)
    assert configured_base_url() == redis_dbs.DEFAULT_REDIS_URL


def test_a_named_server_that_does_not_answer_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(redis_dbs.REDIS_URL_ENV, redis_dbs.NEVER_CONTACTED)
    with pytest.raises(RuntimeError, match="does not answer"):
        with redis_db("nowhere"):
            pass
    assert "nowhere" not in DATABASES.held()


def test_every_module_asks_the_allocator() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{n}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name != "redis_dbs.py" and path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if HARD_CODED.search(line)
    ]
    assert offenders == []
