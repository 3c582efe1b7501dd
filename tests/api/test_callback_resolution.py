"""A callback attempt's deadline covers the name's resolution: a slow resolver (the real
`resolve`, slowed down, handed to the dispatcher as its resolver) cannot stretch an
attempt past ZEROUNLEARN_CALLBACK_TIMEOUT_S, and what it takes is not given again to the
HTTP part. Real receivers on 127.0.0.1 (tests/support/receiver.py, tarpit.py), a real
store; no Redis (attempts are made directly)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app import callback_http
from app.callback_delivery import CallbackDispatcher
from app.settings import Settings
from store import ArtifactStore
from tests.api.test_callback_delivery import attempts, ended_job_with_callback
from tests.support.receiver import Receiver
from tests.support.tarpit import Tarpit

pytestmark = pytest.mark.timeout(60)
DEADLINE_S = 2.0


def slow(delay_s: float) -> Callable[[str, int], str]:
    """callback_http.resolve after `delay_s` seconds (a DNS server that is slow)."""

    def resolver(host: str, port: int) -> str:
        time.sleep(delay_s)
        return callback_http.resolve(host, port)

    return resolver


def dispatcher(tmp_path: Path, resolver: Callable[[str, int], str]) -> CallbackDispatcher:
    settings = Settings(data_dir=tmp_path / "data", callback_allowed_hosts="127.0.0.1",
                        callback_timeout_s=DEADLINE_S)
    return CallbackDispatcher(ArtifactStore(settings.data_dir), settings, resolver=resolver)


def timed_attempt(d: CallbackDispatcher, url: str) -> tuple[str, str | None, float]:
    job_id = ended_job_with_callback(d.store, url)
    began = time.monotonic()
    outcome = d.attempt(job_id)
    return job_id, outcome, time.monotonic() - began


def test_a_resolver_slower_than_the_deadline_ends_the_attempt_at_the_deadline(
    tmp_path: Path,
) -> None:
    d = dispatcher(tmp_path, slow(3 * DEADLINE_S))
    receiver = Receiver()
    try:
        job_id, outcome, took = timed_attempt(d, receiver.url)
    finally:
        receiver.close()
    assert outcome == "deadline exceeded"
    assert DEADLINE_S - 0.1 <= took <= DEADLINE_S + 0.5, took
    assert receiver.calls == []
    [recorded] = attempts(d.store, job_id)
    assert recorded["outcome"] == "deadline exceeded" and recorded["state"] == "pending"


def test_the_time_resolution_took_is_not_given_again_to_the_http_part(
    tmp_path: Path,
) -> None:
    """Resolution takes 1.2 s of the 2 s; the tarpit (a byte every 0.5 s) holds the rest:
    the attempt still ends at 2 s, after the connection was held about 0.8 s."""
    d = dispatcher(tmp_path, slow(1.2))
    tarpit = Tarpit(interval_s=0.5)
    try:
        _, outcome, took = timed_attempt(d, tarpit.url)
    finally:
        tarpit.close()
    assert outcome == "deadline exceeded"
    assert DEADLINE_S - 0.1 <= took <= DEADLINE_S + 0.5, took
    [visit] = tarpit.visits
    assert visit.closed is not None
    assert visit.closed - visit.opened <= DEADLINE_S - 1.2 + 0.4, visit.closed - visit.opened


def test_a_slow_resolution_within_the_deadline_still_delivers_to_the_checked_address(
    tmp_path: Path,
) -> None:
    d = dispatcher(tmp_path, slow(0.5))
    receiver = Receiver()
    try:
        job_id, outcome, took = timed_attempt(d, receiver.url)
    finally:
        receiver.close()
    assert outcome == "delivered" and took < DEADLINE_S
    assert len(receiver.calls) == 1
    assert receiver.calls[0]["headers"]["webhook-id"] == f"msg_{job_id}"


def test_a_name_the_resolver_cannot_encode_is_a_recorded_failure(tmp_path: Path) -> None:
    """getaddrinfo raises UnicodeError (not OSError) for a label over 63 characters: the
    attempt is still recorded, as a failure, instead of escaping the delivery thread."""
    d = dispatcher(tmp_path, callback_http.resolve)
    job_id, outcome, _ = timed_attempt(d, f"https://{'a' * 64}.example/hook")
    assert outcome == "resolution failed: UnicodeError"
    assert [a["outcome"] for a in attempts(d.store, job_id)] == [outcome]
