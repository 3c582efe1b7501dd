"""/metrics under `python -m app --workers 2` (its own Redis database): the HTTP counters of both
processes add up whichever process answers the scrape (prometheus_client's multiprocess
mode, its directory emptied at start), and junk methods and paths add no series."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import processes
from tests.support.redis_dbs import redis_db

pytestmark = pytest.mark.timeout(300)
REQUESTS = 60


def start_two_process_api(root: Path, redis_url: str, metrics_dir: Path
                          ) -> processes.ServiceProcess:
    port = processes.free_port()
    env = processes.service_env(redis_url, root / "data", **processes.api_defaults(root),
                                PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    proc = processes.spawn("api2", ["-m", "app", "--port", str(port), "--workers", "2"], env,
                           root / "logs")
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    try:
        processes.wait_http_ok(f"{proc.extra['url']}/healthz", proc, 90)
    except BaseException:
        proc.stop(kill=True)
        raise
    return proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("metrics2")
    with redis_db("metrics-bounded-api") as url:
        yield root, url


def healthz_count(url: str) -> float:
    """zerounlearn_http_requests_total of GET /healthz 200, as one scrape reports it."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "zerounlearn_http_requests_total"
                    and sample.labels.get("route") == "/healthz"
                    and sample.labels.get("status") == "200"):
                return sample.value
    return 0.0


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(text) for s in f.samples}


def probe(url: str, n: int, errors: list[int]) -> None:
    """GET /healthz n times, a new connection each time (spread over the processes)."""
    for _ in range(n):
        status = httpx.get(f"{url}/healthz").status_code
        if status != 200:
            errors.append(status)


def pids_counting(metrics_dir: Path) -> set[str]:
    return {m.group(1) for f in metrics_dir.glob("*.db")
            if (m := re.search(r"_(\d+)\.db$", f.name))}


def test_counters_add_up_across_api_processes_and_start_from_zero(
    stack: tuple[Path, str],
) -> None:
    root, redis_url = stack
    metrics_dir = root / "prom"
    for run in range(2):  # the second run must not see the first run's counts
        api = start_two_process_api(root, redis_url, metrics_dir)
        try:
            url = api.extra["url"]
            base = healthz_count(url)  # the start-up probes' own /healthz calls
            assert base <= 60, base
            errors: list[int] = []
            threads = [threading.Thread(target=probe, args=(url, REQUESTS // 6, errors))
                       for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not errors
            scraped = [healthz_count(url) for _ in range(12)]
            assert scraped == [base + REQUESTS] * 12, (run, scraped)
            assert len(pids_counting(metrics_dir)) >= 2  # both processes served something
        finally:
            api.stop()


def test_junk_methods_and_paths_do_not_grow_the_scrape(stack: tuple[Path, str]) -> None:
    root, redis_url = stack
    api = start_two_process_api(root, redis_url, root / "prom-junk")
    try:
        url = api.extra["url"]
        with httpx.Client(base_url=url) as client:
            client.request("JUNKWARMUP", "/v1/models")
            client.get(f"/no/such/{secrets.token_hex(4)}")
            client.get("/metrics")  # its own series exist from now on
            before = client.get("/metrics").text
            junk = [f"X{secrets.token_hex(6).upper()}" for _ in range(1000)]
            for method in junk:
                client.request(method, "/v1/models")
            for _ in range(200):
                client.get(f"/no/such/{secrets.token_hex(8)}")
            after = client.get("/metrics").text
        assert series(after) == series(before)  # values changed, not the set of series
        assert len(after) - len(before) < 2000, (len(before), len(after))
        assert not any(method in after for method in junk)
        families = {f.name: f for f in text_string_to_metric_families(after)}
        labels = {(s.labels["method"], s.labels["route"])
                  for s in families["zerounlearn_http_requests"].samples}
        assert ("other", "/v1/models") in labels
        assert all(not route.startswith("/no/such") for _, route in labels)
        assert {m for m, _ in labels} <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                         "OPTIONS", "other"}
    finally:
        api.stop()
