"""Schemathesis against a real `python -m app` (uvicorn) and its /openapi.json.

Every operation gets a bounded number of generated requests (valid and invalid), sent
with the admin key: no answer may be a 500, and every answer must match the documented
status codes and schemas (503 is documented: no worker runs here, jobs stay queued;
a Redis database of its own).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import processes
from tests.support.redis_dbs import redis_db

pytestmark = pytest.mark.timeout(180)
EXAMPLES = 20
"""Generated requests per operation (about 25 operations): some seconds."""


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    with redis_db("openapi-fuzz-api") as url:
        api = processes.start_api(url, root / "data", root / "logs",
                                  **processes.api_defaults(root))
        try:
            yield api.extra["url"]
        finally:
            api.stop()
            assert "Traceback" not in api.log_tail(20_000), api.log_tail()


@schemathesis.check
def no_internal_error(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                      case: schemathesis.Case) -> bool | None:
    """No 500 (an unhandled error); 503 (no worker runs here) is a documented answer."""
    if response.status_code == 500:
        raise AssertionError(f"500 from {case.method} {case.path}: {response.text[:300]}")
    return None


def test_no_server_errors_and_responses_match_the_schema(api_url: str) -> None:
    """Hypothesis per operation (schemathesis' pytest plugin does not support pytest 9)."""
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers=processes.auth_headers(),
                checks=[no_internal_error, response_schema_conformance,
                        status_code_conformance],
                timeout=30,
            )

        try:
            run()
        except BaseException as exc:  # hypothesis raises exception groups; collect all
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)


def test_the_openapi_document_describes_auth(api_url: str) -> None:
    import httpx

    spec = httpx.get(f"{api_url}/openapi.json").json()
    forget = spec["paths"]["/v1/models/{model_id}/forget"]["post"]
    assert {"401", "403", "413", "422"} <= set(forget["responses"])
    assert forget["security"] == [{"HTTPBearer": []}]
