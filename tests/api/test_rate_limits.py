"""Rate limits per key and per client address against two real API processes sharing
one Redis database: 429 with Retry-After and the error shape at the limit, counted in
Redis (both processes count against the same windows); probes and /metrics exempt; with
Redis down the limiter lets requests through."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.ratelimit import address_bucket
from app.settings import Settings
from tests.support import processes
from tests.support.redis_dbs import redis_db

pytestmark = pytest.mark.timeout(300)
PER_KEY = 6
PER_ADDRESS = 10


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Base URLs of two API processes on one Redis database and data directory."""
    root = tmp_path_factory.mktemp("limits")
    env = {**processes.api_defaults(root),
           "ZEROUNLEARN_RATE_LIMIT_PER_KEY": f"{PER_KEY}/minute",
           "ZEROUNLEARN_RATE_LIMIT_PER_ADDRESS": f"{PER_ADDRESS}/minute"}
    with redis_db("rate-limits-api") as url:
        first = processes.start_api(url, root / "data", root / "logs", **env)
        try:
            second = processes.start_api(url, root / "data", root / "logs2", **env)
        except BaseException:
            first.stop()
            raise
        try:
            yield [first.extra["url"], second.extra["url"]]
        finally:
            second.stop()
            first.stop()


def from_address(address: str, token: str | None = None) -> dict[str, str]:
    """Headers of a request from `address`: uvicorn trusts X-Forwarded-For from
    127.0.0.1 (its default FORWARDED_ALLOW_IPS), as from a proxy on the same host."""
    headers = {"X-Forwarded-For": address}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def assert_limited(response: httpx.Response, who: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    assert who in response.json()["error"]["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 60


def test_per_key_limit_is_shared_by_every_api_process(apis: list[str]) -> None:
    admin = processes.TEST_ADMIN_TOKEN
    created = httpx.post(f"{apis[0]}/v1/keys", json={"role": "viewer"},
                         headers=from_address("10.1.0.1", admin))
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    codes = [httpx.get(f"{apis[i % 2]}/v1/models", headers=from_address(f"10.1.1.{i}", key))
             for i in range(PER_KEY + 2)]  # a new address each time: only the key counts
    assert [r.status_code for r in codes[:PER_KEY]] == [200] * PER_KEY
    for response in codes[PER_KEY:]:
        assert_limited(response, key_id)
    # another key is not affected
    other = httpx.get(f"{apis[1]}/v1/models", headers=from_address("10.1.2.1", admin))
    assert other.status_code == 200


def test_per_address_limit_counts_every_request_but_probes(apis: list[str]) -> None:
    address = "10.2.0.1"
    answers = [httpx.get(f"{apis[i % 2]}/v1/receipts/keys", headers=from_address(address))
               for i in range(PER_ADDRESS)]  # the one open /v1 call
    assert {r.status_code for r in answers} == {200}
    for path in ("/v1/receipts/keys", "/v1/models", "/"):
        assert_limited(httpx.get(f"{apis[0]}{path}", headers=from_address(address)),
                       "client address")
    # a keyless body is refused by the limit before anything else
    refused = httpx.post(f"{apis[1]}/v1/models", json={"name": "x"},
                         headers=from_address(address))
    assert_limited(refused, "client address")
    for path in ("/healthz", "/metrics", "/readyz"):  # exempt, however often
        for _ in range(PER_ADDRESS + 1):
            response = httpx.get(f"{apis[0]}{path}", headers=from_address(address))
            assert response.status_code in (200, 503), path  # /readyz: no worker here
    assert httpx.get(f"{apis[0]}/v1/receipts/keys",
                     headers=from_address("10.2.0.2")).status_code == 200


def test_ipv6_clients_are_counted_by_their_64_prefix() -> None:
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:bbbb::9")
    assert address_bucket("2001:db8:1:2::1") != address_bucket("2001:db8:1:3::1")
    assert address_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_bucket("192.0.2.7") == "192.0.2.7"


def test_the_limiter_fails_open_when_redis_is_down(tmp_path: Path) -> None:
    """No Redis: requests are let through (not 429, nor 500 for calls that need no
    Redis), without waiting on Redis for each."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{processes.free_port()}/0",
                        data_dir=tmp_path / "data", admin_token=processes.TEST_ADMIN_TOKEN,
                        rate_limit_per_address="1/minute", rate_limit_per_key="1/minute",
                        redis_connect_timeout_s=0.5, reconcile_interval_s=3600)
    with TestClient(create_app(settings)) as client:
        began = time.monotonic()
        codes = [client.get("/v1/receipts/keys").status_code for _ in range(5)]
        codes += [client.get("/v1/keys/me", headers=processes.auth_headers()).status_code
                  for _ in range(3)]
        assert codes == [200] * 8
        assert time.monotonic() - began < 3.0
