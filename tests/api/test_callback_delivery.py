"""Callbacks off the reconciler: a tarpit receiver (real socket, one byte every 3 s)
neither delays a purge nor holds an attempt past its deadline, and is retried later;
the connection goes to the address that was checked; the IPv6 allow-list entry matches.

Real Redis (the module's own database, flushed), a real store, the reconciler's own thread, real
sockets on 127.0.0.1.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis

from app.callback_http import DeliveryFailed, post
from app.callbacks import check_callback_url
from app.errors import InvalidInput
from app.queue import JobQueue
from app.reconciler import Reconciler
from app.settings import Settings
from store import ArtifactStore
from store.documents import new_job_id
from tests.support import processes
from tests.support.receiver import Receiver
from tests.support.redis_dbs import NEVER_CONTACTED
from tests.support.tarpit import Tarpit

DEADLINE_S = 4.0
MODEL = "m-0123456789ab"


def make_settings(
    tmp_path: Path, redis_url: str = NEVER_CONTACTED, **overrides: object
) -> Settings:
    values: dict = {"redis_url": redis_url, "data_dir": tmp_path / "data",
                    "callback_allowed_hosts": "127.0.0.1", "callback_timeout_s": DEADLINE_S,
                    "callback_backoff_s": 1.0, "request_retention_s": 0,
                    "reconcile_interval_s": 0.2, "reconcile_grace_s": 0}
    values.update(overrides)
    return Settings(**values)


def ended_job_with_callback(store: ArtifactStore, url: str) -> str:
    """An accepted forget request whose job has ended, with a callback to `url`."""
    job_id = new_job_id()
    store.create_job({"id": job_id, "kind": "forget", "model_id": MODEL})
    args = [MODEL, "v0", [{"prompt": "Quorra lives in", "answer": " Paris"}], None, {}]
    callback = {"url": url, "state": "pending", "attempts": 0, "next_attempt_at": 0.0,
                "last_error": None}
    store.requests.create({"job_id": job_id, "kind": "forget", "task_args": args,
                           "callback": callback})
    store.transition_job(job_id, ["queued"], "running")
    # failed: a succeeded forget's callback carries a receipt, which needs a real version
    store.transition_job(job_id, ["running"], "failed", error={"code": "x", "message": "y"})
    return job_id


def attempts(store: ArtifactStore, job_id: str) -> list[dict]:
    entries, _ = store.audit.page(0, 1000)
    return [e["detail"] for e in entries
            if e["action"] == "callback.attempt" and e["ids"].get("job") == job_id]


def test_tarpit_receiver_does_not_delay_the_purge_and_is_cut_and_retried(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url)
    store = ArtifactStore(settings.data_dir)
    reconciler = Reconciler(store, JobQueue(redis, settings), settings)
    tarpit = Tarpit(interval_s=3.0)
    try:
        job_id = ended_job_with_callback(store, tarpit.url)
        began = time.monotonic()
        reconciler.start()
        processes.wait_until(lambda: store.requests.get(job_id)["task_args"] is None,
                             DEADLINE_S, 0.05, "the purge")
        purged_at = time.monotonic()
        # the purge did not wait for the attempt (made in parallel, held for the deadline)
        assert purged_at - began < 1.5, purged_at - began
        # the visit is recorded at accept, its bytes a moment later (seen late under load)
        processes.wait_until(lambda: len(tarpit.visits) == 1 and tarpit.visits[0].request != b"",
                             2, 0.02, "the attempt's request")
        visit = tarpit.visits[0]
        assert b"webhook-signature" in visit.request
        # cut at the deadline (a per-read timeout would never fire: a byte every 3 s)
        processes.wait_until(lambda: visit.closed is not None, DEADLINE_S + 3, 0.05,
                             "the attempt cut")
        assert visit.closed is not None and visit.closed - purged_at > DEADLINE_S - 2
        held = visit.closed - visit.opened
        assert DEADLINE_S - 0.5 <= held <= DEADLINE_S + 1.0, held
        # recorded, and retried after the backoff
        processes.wait_until(lambda: len(attempts(store, job_id)) >= 1, 5, 0.05, "audit")
        first = attempts(store, job_id)[0]
        assert first["outcome"] == "deadline exceeded" and first["state"] == "pending"
        processes.wait_until(lambda: len(tarpit.visits) >= 2, 10, 0.05, "a retry")
        assert tarpit.visits[1].opened - visit.closed >= 0.9  # the 1 s backoff
        callback = store.requests.get(job_id)["callback"]
        assert callback["attempts"] >= 1 and callback["last_error"] == "deadline exceeded"
    finally:
        reconciler.stop()
        tarpit.close()


def test_a_delivered_callback_settles_the_request(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url)
    store = ArtifactStore(settings.data_dir)
    reconciler = Reconciler(store, JobQueue(redis, settings), settings)
    receiver = Receiver(failures=1)
    try:
        job_id = ended_job_with_callback(store, receiver.url)
        reconciler.start()
        processes.wait_until(
            lambda: store.requests.is_settled(job_id), 15, 0.1,
            "the request settled")
        assert [a["outcome"] for a in attempts(store, job_id)] == ["HTTP 500", "delivered"]
        assert store.requests.get(job_id)["callback"]["state"] == "delivered"
        assert len(receiver.calls) == 2
    finally:
        reconciler.stop()
        receiver.close()


def test_post_connects_to_the_pinned_address_with_the_urls_host() -> None:
    """The name in the URL is not resolved again: the connection goes to the address
    given (here 127.0.0.1, which hooks.example.com never resolves to), and the Host
    header keeps the URL's host."""
    receiver = Receiver()
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    try:
        status = post(f"http://hooks.example.com:{port}/hook?x=1", "127.0.0.1",
                      {"Content-Type": "application/json"}, b"{}", 5.0)
    finally:
        receiver.close()
    assert status == 200
    assert receiver.calls[0]["headers"]["Host"] == f"hooks.example.com:{port}"
    assert receiver.calls[0]["raw"] == b"{}"


def test_post_deadline_covers_the_whole_answer() -> None:
    tarpit = Tarpit(interval_s=0.7)  # each byte well within any per-read timeout
    try:
        began = time.monotonic()
        with pytest.raises(DeliveryFailed, match="deadline exceeded"):
            post(tarpit.url, "127.0.0.1", {}, b"{}", 2.0)
        took = time.monotonic() - began
    finally:
        tarpit.close()
    assert 1.9 <= took <= 2.6, took


def test_post_refuses_a_closed_port_quickly() -> None:
    port = processes.free_port()
    with pytest.raises(DeliveryFailed, match="ConnectionRefusedError"):
        post(f"http://127.0.0.1:{port}/hook", "127.0.0.1", {}, b"{}", 2.0)


@pytest.mark.parametrize(
    ("allowed", "url", "ok"),
    [
        ("[::1]:9101", "http://[::1]:9101/hook", True),
        ("[::1]:9101", "http://[::1]:9102/hook", False),
        ("[::1]", "http://[::1]:9101/hook", True),
        ("::1", "http://[::1]:9101/hook", True),
        ("hooks.example.com:443", "https://hooks.example.com/zu", True),
        ("hooks.example.com:8443", "https://hooks.example.com/zu", False),
        ("127.0.0.1:9101", "http://127.0.0.1:9101/hook", True),
    ],
)
def test_allow_list_entries(tmp_path: Path, allowed: str, url: str, ok: bool) -> None:
    settings = Settings(data_dir=tmp_path, callback_allowed_hosts=allowed)
    if ok:
        assert check_callback_url(url, settings) == url
    else:
        with pytest.raises(InvalidInput, match="ZEROUNLEARN_CALLBACK_ALLOWED_HOSTS"):
            check_callback_url(url, settings)
