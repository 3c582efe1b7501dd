"""Coalesced forget requests and the lost-deletion fix, with real processes: `python -m
app` and `python -m worker` on a Redis database of their own, the tiny GPT-2.

Requests for the same model, base rule, method and hparams that wait together become
ONE edit and ONE version; anything else stays apart; a bad or cancelled request stays
out of the batch; with coalescing off, requests queued together still form a chain
whose head forgets them all.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.lock import Lock

from tests.support import processes
from tests.support.live import LiveService, live_service, records
from tests.support.tiny_model import TINY_REQUEST_HPARAMS
from worker.coalesce import EditSpec
from worker.edit_lock import EditLockLost, lock_key, model_edit_lock, release_locks_of
from worker.settings import SettingsError, WorkerSettings

pytestmark = pytest.mark.timeout(900)
WINDOW = {"ZEROUNLEARN_COALESCE_WINDOW_S": "1"}
"""Coalescing on. Each test queues all its requests before a worker looks at the queue
(worker_paused, run_stopped), so how long the submissions take never matters."""
OFF = {"ZEROUNLEARN_COALESCE_WINDOW_S": "0", "ZEROUNLEARN_COALESCE_MAX_BATCH": "1"}
CHAIN_PEOPLE = [20, 21, 22]
OVERRIDE = {"override_seal_reason": "test: coalescing on an older version"}
"""v0 is sealed by the module's first forget; these tests edit and verify older versions
on purpose, as an admin may (the client's key is the admin's)."""
wait_job = processes.wait_job


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Iterator[LiveService]:
    root = tmp_path_factory.mktemp("coalesce")
    with live_service(root, tiny_gpt2_dir, "coalescing-stack", **WINDOW) as live:
        yield live


def submit(c: httpx.Client, mid: str, person: int, **extra: Any) -> str:
    body = {"records": records(person), "hparams": TINY_REQUEST_HPARAMS, **extra}
    params = OVERRIDE if "base_version" in extra else None
    response = c.post(f"/v1/models/{mid}/forget", json=body, params=params)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def active(c: httpx.Client, mid: str) -> str:
    return str(c.get(f"/v1/models/{mid}").json()["active_version"])


def manifest(c: httpx.Client, mid: str, version: str) -> dict[str, Any]:
    return c.get(f"/v1/models/{mid}/versions/{version}").json()


def forgotten_by(c: httpx.Client, mid: str, version: str, people: list[int]) -> list[bool]:
    """Per record: is it forgotten by `version` (a verify job)?"""
    body = {"records": [r for p in people for r in records(p)]}
    response = c.post(f"/v1/models/{mid}/versions/{version}/verify", json=body,
                      params=OVERRIDE)
    assert response.status_code == 202, response.text
    report = wait_job(c, response.json()["job_id"])
    assert report["status"] == "succeeded", report
    return [r["forgotten"] for r in report["result"]["records"]]


@contextlib.contextmanager
def worker_paused(svc: LiveService) -> Iterator[None]:
    """The idle worker frozen (SIGSTOP) for the block, resumed (SIGCONT) after it: what is
    submitted meanwhile all waits in the queue when the worker takes the first job."""
    svc.stack.worker.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        svc.stack.worker.signal(signal.SIGCONT)


def run_stopped(svc: LiveService, submit_all: Any, env: dict[str, str] | None = None) -> Any:
    """Stop the worker, submit (all wait in the queue), start a worker (extra env)."""
    svc.stack.worker.stop()
    submitted = submit_all()
    svc.stack.start_worker(env)
    return submitted


def test_coalescing_settings_are_validated() -> None:
    s = WorkerSettings.from_env({"REDIS_URL": "redis://h:6379/0"})
    assert (s.coalesce_window_s, s.coalesce_max_batch, s.coalescing) == (2.0, 64, True)
    off = WorkerSettings.from_env({"REDIS_URL": "redis://h:6379/0", **OFF})
    assert (off.coalesce_window_s, off.coalescing) == (0.0, False)
    bad = {"REDIS_URL": "redis://h:6379/0", "ZEROUNLEARN_COALESCE_WINDOW_S": "-1",
           "ZEROUNLEARN_COALESCE_MAX_BATCH": "0"}
    with pytest.raises(SettingsError) as info:
        WorkerSettings.from_env(bad)
    assert "ZEROUNLEARN_COALESCE_WINDOW_S" in str(info.value)
    assert "ZEROUNLEARN_COALESCE_MAX_BATCH" in str(info.value)
    with pytest.raises(SettingsError, match="number of seconds"):
        WorkerSettings.from_env({**bad, "ZEROUNLEARN_COALESCE_WINDOW_S": "soon",
                                 "ZEROUNLEARN_COALESCE_MAX_BATCH": "8"})


def test_edit_spec_admits_only_the_same_edit() -> None:
    spec = EditSpec("m-1", ("active", None), "zerounlearn", {"layers": [1]})
    job = {"kind": "forget", "model_id": "m-1", "base": "active", "version": "v3"}
    args = ["m-1", "v3", [], "zerounlearn", {"layers": [1]}]
    assert spec.admits(job, args)
    assert not spec.admits({**job, "model_id": "m-2"}, args)
    assert not spec.admits({**job, "kind": "verify"}, args)
    assert not spec.admits({**job, "base": "explicit"}, args)
    assert not spec.admits(job, [*args[:3], "npo", args[4]])
    assert not spec.admits(job, [*args[:4], {"layers": [0]}])
    explicit = EditSpec("m-1", ("explicit", "v3"), "zerounlearn", {})
    assert explicit.admits({**job, "base": "explicit"}, [*args[:4], None])
    assert explicit.admits({"kind": "forget", "model_id": "m-1", "version": "v3"},
                           [*args[:4], {}])  # a document from before "base" existed
    assert not explicit.admits({**job, "base": "explicit", "version": "v2"}, [*args[:4], {}])


def test_edit_lock_excludes_and_a_dead_holders_lock_is_freed(svc: LiveService) -> None:
    conn = Redis.from_url(svc.stack.redis_url)
    mid = "m-locktest0000"  # no such model: only the lock key is used
    try:
        with model_edit_lock(conn, mid, "w-a") as held:
            assert conn.get(lock_key(mid)).decode().startswith("w-a|")
            assert not Lock(conn, lock_key(mid)).acquire(blocking=False)
            held.check()
            conn.delete(lock_key(mid))  # expired underneath its holder
            with pytest.raises(EditLockLost):
                held.check()
        assert conn.get(lock_key(mid)) is None
        conn.set(lock_key(mid), "w-dead|1", px=60_000)
        conn.set(lock_key("m-locktest0001"), "w-live|2", px=60_000)
        assert release_locks_of(conn, ["w-dead"]) == [mid]
        assert conn.get(lock_key(mid)) is None
        assert conn.get(lock_key("m-locktest0001")) == b"w-live|2"
    finally:
        conn.delete(lock_key(mid), lock_key("m-locktest0001"))
        conn.close()


def test_requests_within_the_window_share_one_version(svc: LiveService) -> None:
    c, mid = svc.stack.client, svc.model["id"]
    head = active(c, mid)
    people = list(range(0, 6))
    with worker_paused(svc):  # the worker is running: it takes the first, the others join
        ids = [submit(c, mid, p) for p in people]
    jobs = [wait_job(c, j) for j in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 6, jobs
    versions = {j["result"]["version"] for j in jobs}
    assert len(versions) == 1, versions
    (new,) = versions
    assert active(c, mid) == new
    leader = next(j for j in jobs if not j.get("coalesced_into"))
    for job in jobs:
        result = job["result"]
        assert job["base"] == "active" and job["version"] == head == result["parent"]
        assert result["batch_records"] == 6 and result["total"] == 1
        assert [r["index"] for r in result["records"]] == [0]  # its own record only
        assert result["records"][0]["forgotten"] is True
        assert sorted(result["coalesced_with"]) == sorted(set(ids) - {job["id"]})
        assert set(result["timings"]) >= {"queue_wait_s", "load_s", "compute_s"}
        assert isinstance(result["model_cache_hit"], bool)
        if job is not leader:
            assert job["coalesced_into"] == leader["id"]
    version = manifest(c, mid, new)
    assert version["job_id"] == leader["id"] and sorted(version["jobs"]) == sorted(ids)
    assert len(version["records"]) == 6 and version["parent"] == head
    assert forgotten_by(c, mid, new, people) == [True] * 6
    # every job keeps its own audit trail, and a receipt naming the shared version
    audit = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    for job_id in ids:
        actions = [e["action"] for e in audit if e["ids"].get("job") == job_id]
        assert actions[:3] == ["request.accepted", "job.started", "job.succeeded"], actions
        receipt = c.get(f"/v1/jobs/{job_id}/receipt").json()["receipt"]
        assert receipt["version"] == new and receipt["request_id"] == job_id
    logs = svc.stack.logs()
    for p in people:
        assert records(p)[0]["prompt"] not in logs


def test_different_edits_are_not_merged(svc: LiveService) -> None:
    c, mid = svc.stack.client, svc.model["id"]
    other = {**TINY_REQUEST_HPARAMS, "preserve_weight": 40.0}

    def submit_all() -> list[str]:
        return [
            submit(c, mid, 6), submit(c, mid, 7),  # floating, the same edit
            submit(c, mid, 8, hparams=other),  # other hparams
            submit(c, mid, 9, base_version="v0"), submit(c, mid, 10, base_version="v0"),
        ]

    ids = run_stopped(svc, submit_all)
    a, b, h, e1, e2 = (wait_job(c, j) for j in ids)
    assert [j["status"] for j in (a, b, h, e1, e2)] == ["succeeded"] * 5
    assert a["result"]["version"] == b["result"]["version"]
    assert a["result"]["batch_records"] == 2
    assert h["result"]["batch_records"] == 1
    assert h["result"]["parent"] == a["result"]["version"]  # it followed the head
    assert e1["result"]["version"] == e2["result"]["version"] != a["result"]["version"]
    assert e1["result"]["parent"] == "v0" and e1["base"] == "explicit"
    assert sorted(manifest(c, mid, e1["result"]["version"])["jobs"]) == sorted(ids[3:])


def test_a_bad_request_fails_alone(svc: LiveService) -> None:
    c, mid = svc.stack.client, svc.model["id"]
    # the API takes 2000 characters; the tiny model has 64 positions: only the worker,
    # with the tokenizer, can tell that the prompt does not fit
    long = [{"prompt": "Long ago, " * 30 + "the secret code of nobody is", "answer": " 1"}]
    # on v0: an edit of a version that earlier tests edited may miss facts of the toy
    # model that those edits disturbed, which is not what this test is about
    v0 = {"base_version": "v0"}

    def submit_all() -> list[str]:
        return [
            submit(c, mid, 11, records=long, **v0),  # first: it would lead the edit
            submit(c, mid, 12, **v0),
            submit(c, mid, 13, records=long, **v0),  # claimed into the edit, then refused
            submit(c, mid, 14, **v0),
        ]

    ids = run_stopped(svc, submit_all)
    bad1, good1, bad2, good2 = (wait_job(c, j) for j in ids)
    assert bad1["status"] == bad2["status"] == "failed"
    assert bad1["error"]["code"] == bad2["error"]["code"] == "invalid_record"
    assert "Long ago" not in bad1["error"]["message"] + bad2["error"]["message"]
    assert bad2["coalesced_into"] == good1["id"]
    assert good1["status"] == good2["status"] == "succeeded", (good1, good2)
    version = good1["result"]["version"]
    assert good2["result"]["version"] == version and good1["result"]["batch_records"] == 2
    assert sorted(manifest(c, mid, version)["jobs"]) == sorted([good1["id"], good2["id"]])
    assert forgotten_by(c, mid, version, [12, 14]) == [True, True]


def test_a_cancelled_request_is_not_claimed(svc: LiveService) -> None:
    c, mid = svc.stack.client, svc.model["id"]

    def submit_all() -> list[str]:
        ids = [submit(c, mid, p) for p in (15, 16, 17)]
        cancelled = c.delete(f"/v1/jobs/{ids[1]}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        return ids

    ids = run_stopped(svc, submit_all)
    first, cancelled, last = (wait_job(c, j) for j in ids)
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
    assert not cancelled.get("coalesced_into") and cancelled["result"] is None
    assert first["status"] == last["status"] == "succeeded"
    version = first["result"]["version"]
    assert last["result"]["version"] == version and first["result"]["batch_records"] == 2
    assert sorted(manifest(c, mid, version)["jobs"]) == sorted([first["id"], last["id"]])


def test_without_coalescing_queued_requests_form_a_chain(svc: LiveService) -> None:
    """The lost-deletion fix: each floating request builds on the head the one before
    it left, so the chain of versions carries every request's records."""
    c, mid = svc.stack.client, svc.model["id"]
    head = active(c, mid)
    ids = run_stopped(svc, lambda: [submit(c, mid, p) for p in CHAIN_PEOPLE], env=OFF)
    try:
        jobs = [wait_job(c, j) for j in ids]
    finally:
        svc.stack.restart_worker()  # back to the module's settings
    assert [j["status"] for j in jobs] == ["succeeded"] * 3, jobs
    chain = [j["result"]["version"] for j in jobs]
    parents = [j["result"]["parent"] for j in jobs]
    assert len(set(chain)) == 3
    assert parents == [head, chain[0], chain[1]]  # each built on the one before
    assert [j["version"] for j in jobs] == parents  # the base it resolved, in its document
    assert all(j["result"]["batch_records"] == 1 and not j["result"]["coalesced_with"]
               for j in jobs)
    assert active(c, mid) == chain[2]
    hashes = [manifest(c, mid, v)["records"] for v in chain]
    assert all(len(h) == 1 for h in hashes) and len({h[0]["sha256"] for h in hashes}) == 3
    assert [manifest(c, mid, v)["jobs"] for v in chain] == [[j] for j in ids]


def test_the_head_of_a_chain_forgets_every_request(svc: LiveService) -> None:
    """What the chain is for: the active version forgets all three requests. This needs
    an engine whose edit of an edited version takes and keeps the earlier edits (it
    failed until records whose projected target undoes their shift were left
    unprojected: zerounlearn.methods.zerounlearn.projected_records)."""
    c, mid = svc.stack.client, svc.model["id"]
    head = active(c, mid)
    assert manifest(c, mid, head)["jobs"], "run after the chain test"
    assert forgotten_by(c, mid, head, CHAIN_PEOPLE) == [True] * 3
