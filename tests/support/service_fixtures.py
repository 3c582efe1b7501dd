"""Fixtures shared by the store, worker, API and end-to-end tests; each of those layers'
conftest.py imports the ones it uses (pytest registers a fixture where it is imported)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from store.sql.engine import DATABASE_URL_ENV
from tests.support.live import LiveService, live_service
from tests.support.moto_s3 import moto_s3_server
from tests.support.postgres import fresh_database_url
from tests.support.redis_dbs import flushed_redis, redis_db


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Iterator[LiveService]:
    """API + worker with JSON logs and the tiny model ready (the client, CLI and metrics
    tests share it)."""
    root = tmp_path_factory.mktemp("live")
    with live_service(root, tiny_gpt2_dir, "live", ZEROUNLEARN_LOG_FORMAT="json") as svc:
        yield svc


@pytest.fixture(scope="module")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a Redis database leased to the test module (by its name) for its tests."""
    with redis_db(request.module.__name__) as url:
        yield url


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A connection to the module's database, flushed before and after the test."""
    with flushed_redis(redis_url) as conn:
        yield conn


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto) on localhost, one per test module."""
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture(autouse=True)
def _test_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """ZEROUNLEARN_TEST_DATABASE=postgresql: a test that builds its API or store in this
    process (create_app(Settings(...)), ArtifactStore(data_dir)) gets a fresh database on
    the test PostgreSQL server through ZEROUNLEARN_DATABASE_URL, as the service stacks
    do (tests.support.processes.stack_database). Left alone when a stack of a wider scope
    already set one (its test must see the stack's database), and by default (SQLite)."""
    url = None if os.environ.get(DATABASE_URL_ENV) else fresh_database_url()
    if url is not None:
        monkeypatch.setenv(DATABASE_URL_ENV, url)
    yield
