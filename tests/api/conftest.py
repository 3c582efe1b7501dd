"""The shared service fixtures (tests/support/service_fixtures.py) for this layer."""

from tests.support.service_fixtures import (  # noqa: F401
    _test_database,
    redis,
    redis_url,
    s3_endpoint,
)
