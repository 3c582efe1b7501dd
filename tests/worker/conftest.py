"""The shared service fixtures (tests/support/service_fixtures.py) for this layer."""

from tests.support.service_fixtures import _test_database, redis, redis_url  # noqa: F401
