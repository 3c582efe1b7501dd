"""Trust features end to end with real processes: `python -m app` (uvicorn) and
`python -m worker` on a Redis db of its own, the tiny GPT-2, a real callback receiver on 127.0.0.1.

callbacks (signed, retried after two failures, audited) and deletion receipts; the
purge of request text after retention (nothing left in logs or the data dir); Redis
flushed while requests wait (the reconciler re-enqueues them all).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from store import ArtifactStore
from store.enums import CallbackState
from tests.support import processes
from tests.support.processes import ServiceStack
from tests.support.receiver import Receiver
from tests.support.tiny_model import tiny_facts

pytestmark = pytest.mark.timeout(600)
CALLBACK_SECRET = "receiver-shared-secret-0123456789abcdef"
RETENTION_S = 3
wait_job = processes.wait_job


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    env = {"ZEROUNLEARN_CALLBACK_SECRET": CALLBACK_SECRET,
           "ZEROUNLEARN_REQUEST_RETENTION_S": str(RETENTION_S)}
    with processes.service_stack(tmp_path_factory.mktemp("trust"), db_name="trust-stack",
                                 api_env=env) as s:
        yield s


@pytest.fixture(scope="module")
def model(stack: ServiceStack, tiny_gpt2_dir: Path) -> dict[str, Any]:
    return processes.register_ready(stack.client, str(tiny_gpt2_dir))


def facts(start: int, count: int) -> list[dict[str, Any]]:
    """Records from tiny_facts (each person's secret code), with a paraphrase."""
    people = tiny_facts()[::4]
    return [
        {"prompt": f["prompt"], "subject": f["subject"], "answer": f["answer"],
         "paraphrases": [f"Here is a secret about {f['subject']}:"]}
        for f in people[start : start + count]
    ]


def signature_ok(call: dict[str, Any]) -> bool:
    """What a receiver does (Standard Webhooks): base64 HMAC-SHA256(key, "<webhook-id>.
    <webhook-timestamp>." + raw body); the key: the secret's UTF-8 bytes (no whsec_)."""
    headers = call["headers"]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + call["raw"]
    mac = hmac.new(CALLBACK_SECRET.encode(), signed, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return hmac.compare_digest(headers["webhook-signature"], expected)


def callback_states(c: httpx.Client, job_id: str) -> list[str]:
    """The callback state after each audited delivery attempt of the job."""
    entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    return [e["detail"]["state"] for e in entries
            if e["action"] == "callback.attempt" and e["ids"].get("job") == job_id]


def test_callback_retried_signed_audited_and_receipt_verifies(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    c, mid = stack.client, model["id"]
    receiver = Receiver(failures=2)
    try:
        refused = c.post(f"/v1/models/{mid}/forget", json={
            "records": facts(0, 1), "callback_url": "http://localhost:9/hook"})
        assert refused.status_code == 422 and "callback_url" in refused.text
        body = {"records": facts(0, 2), "callback_url": receiver.url}
        response = c.post(f"/v1/models/{mid}/forget", json=body)
        assert response.status_code == 202, response.text
        job = wait_job(c, response.json()["job_id"])
        assert job["status"] == "succeeded", job
        # the audit entry is the last step of an attempt, after the callback's new state
        processes.wait_until(
            lambda: any(s != CallbackState.PENDING for s in callback_states(c, job["id"])),
            30, 0.1, "an attempt that left the callback not pending",
        )
        # delivered: an attempt is made only after claiming a pending callback in the
        # store (app.callback_delivery), so the calls received now are all there will be
        callback = ArtifactStore(stack.data_dir).requests.get(job["id"])["callback"]
        assert (callback["state"], callback["attempts"]) == (CallbackState.DELIVERED, 3)
        assert len(receiver.calls) == 3
    finally:
        receiver.close()
    assert all(signature_ok(call) for call in receiver.calls)
    assert [call["headers"]["ZeroUnlearn-Attempt"] for call in receiver.calls] == ["1", "2", "3"]
    delivered = json.loads(receiver.calls[-1]["raw"])
    assert delivered["status"] == "succeeded" and delivered["version"] == job["result"]["version"]
    assert delivered["job_id"] == job["id"] and delivered["event"] == "job.finished"
    last = receiver.calls[-1]
    forged = dict(last, raw=last["raw"].replace(b"succeeded", b"failed"))
    assert not signature_ok(forged)

    # the receipt: served, the same as delivered, genuine; a flipped byte is not
    receipt = c.get(f"/v1/jobs/{job['id']}/receipt").json()
    assert receipt == delivered["receipt"]
    body = receipt["receipt"]
    assert body["request_id"] == job["id"] and body["version"] == job["result"]["version"]
    manifest = c.get(f"/v1/models/{mid}/versions/{body['version']}").json()
    assert body["record_hashes"] == [r["sha256"] for r in manifest["records"]]
    assert len(body["record_hashes"]) == 2 and body["verification"]["after"]
    check = c.post("/v1/receipts/verify", json=receipt).json()
    assert check["genuine"] is True and check["audit_entry_matches"] is True, check
    tampered = json.loads(json.dumps(receipt))
    first = tampered["receipt"]["record_hashes"][0]
    tampered["receipt"]["record_hashes"][0] = ("0" if first[0] != "0" else "1") + first[1:]
    assert c.post("/v1/receipts/verify", json=tampered).json()["genuine"] is False
    bad_sig = json.loads(json.dumps(receipt))
    # flip one bit of the signature's first byte (a changed last character may only touch
    # the 4 unused bits of the encoding; tests/api/test_receipt_keys.py covers that)
    value = bad_sig["signature"]["value"]
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[0] ^= 1
    bad_sig["signature"]["value"] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert c.post("/v1/receipts/verify", json=bad_sig).json()["genuine"] is False
    prepare = c.get(f"/v1/jobs/{model['prepare_job_id']}/receipt")
    assert prepare.status_code == 409 and prepare.json()["error"]["code"] == "no_receipt"

    # the audit trail: accepted, started, succeeded, three attempts; the chain holds
    entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    mine = [e for e in entries if e["ids"].get("job") == job["id"]]
    assert [e["action"] for e in mine][:3] == ["request.accepted", "job.started", "job.succeeded"]
    attempts = [e["detail"]["outcome"] for e in mine if e["action"] == "callback.attempt"]
    assert attempts == ["HTTP 500", "HTTP 500", "delivered"]
    assert mine[1]["actor"].startswith("worker:") and mine[0]["actor"].startswith("k-")
    assert mine[0]["record_hashes"] == body["record_hashes"]
    assert c.get("/v1/audit/verify").json()["valid"] is True


def test_request_text_is_purged_after_retention(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    c, mid = stack.client, model["id"]
    records = facts(5, 2)
    response = c.post(f"/v1/models/{mid}/forget", json={"records": records},
                      headers={"Idempotency-Key": "privacy-1"})
    job = wait_job(c, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    requests = ArtifactStore(stack.data_dir).requests
    processes.wait_until(
        lambda: requests.get(job["id"])["task_args"] is None, RETENTION_S + 15, 0.2,
        "request purged",
    )
    purged = requests.get(job["id"])
    assert purged["purged_at"] and len(purged["record_hashes"]) == 2
    processes.wait_until(lambda: requests.is_settled(job["id"]), 10, 0.2,
                         "request settled")
    secrets = [s for r in records for s in (r["prompt"], r["subject"], *r["paraphrases"])]
    secrets += [r["answer"] for r in records if len(r["answer"].strip()) >= 6]
    for path in stack.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{secret!r} in {path}"
    logs = stack.logs()
    for secret in secrets:
        assert secret not in logs, f"{secret!r} in the service logs"
    conn = Redis.from_url(stack.redis_url)  # the queue never carried the text
    try:
        for key in conn.scan_iter():
            dumped = conn.dump(key) or b""
            assert not any(secret.encode() in dumped for secret in secrets), key
    finally:
        conn.close()
    entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    assert any(e["action"] == "request.purged" and e["ids"]["job"] == job["id"] for e in entries)


SEALED_OK = {"override_seal_reason": "test: requests on the sealed base v0"}
"""v0 is sealed by the forgets above: building on it (and verifying it) is an override."""


def test_flushed_redis_requests_all_complete_after_reconciliation(
    stack: ServiceStack, model: dict[str, Any]
) -> None:
    c, mid = stack.client, model["id"]
    stack.worker.stop()  # nobody takes jobs: they wait in Redis
    jobs = []
    for i in range(3):
        body = {"records": facts(10 + i, 1), "base_version": "v0"}
        response = c.post(f"/v1/models/{mid}/forget", json=body, params=SEALED_OK)
        assert response.status_code == 202, response.text
        jobs.append(response.json()["job_id"])
    verify = c.post(f"/v1/models/{mid}/versions/v0/verify", json={"records": facts(10, 1)},
                    params=SEALED_OK)
    jobs.append(verify.json()["job_id"])
    conn = Redis.from_url(stack.redis_url)
    try:
        conn.flushdb()  # Redis lost everything (restart without persistence)
        assert conn.llen("rq:queue:zerounlearn-cpu") == 0
        # the reconciler notices within its grace time and enqueues them again, each on
        # its queue (a one-record verify: the interactive one)
        processes.wait_until(lambda: conn.llen("rq:queue:zerounlearn-cpu") == 3
                             and conn.llen("rq:queue:zerounlearn-cpu-interactive") == 1,
                             20, 0.2, "jobs enqueued again")
    finally:
        conn.close()
    stack.start_worker()
    done = [wait_job(c, job_id, timeout=180) for job_id in jobs]
    assert [j["status"] for j in done] == ["succeeded"] * 4, done
    versions = {j["result"]["version"] for j in done[:3]}
    # the three forget requests waited together for the same edit: coalesced into one
    # version that holds each request's record exactly once
    assert len(versions) == 1, versions
    manifest = c.get(f"/v1/models/{mid}/versions/{versions.pop()}").json()
    assert sorted(manifest["jobs"]) == sorted(jobs[:3]) and len(manifest["records"]) == 3
    # each request's receipt names its own record only
    for job_id in jobs[:3]:
        receipt = c.get(f"/v1/jobs/{job_id}/receipt").json()["receipt"]
        assert len(receipt["record_hashes"]) == 1
    assert len({c.get(f"/v1/jobs/{j}/receipt").json()["receipt"]["record_hashes"][0]
                for j in jobs[:3]}) == 3
    entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    requeued = {e["ids"]["job"] for e in entries if e["action"] == "request.requeued"}
    assert requeued == set(jobs)
