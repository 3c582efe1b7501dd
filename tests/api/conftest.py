"""The shared service fixtures (tests/support/service_fixtures.py) for this layer, and
the in-process app and store of a module's `settings` fixture (each module that asks for
`client` or `store` defines `settings`; a module may still define its own `client`)."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from store import ArtifactStore
from tests.support.service_fixtures import (  # noqa: F401
    _test_database,
    redis,
    redis_url,
    s3_endpoint,
)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.data_dir)
