"""Receipts anyone can verify, end to end with real processes: `python -m app`, `python -m
worker`, Redis (a database of its own), the tiny GPT-2, a real callback
receiver, and the `zerounlearn` CLI run as a subprocess with no server to talk to.

A real forget's receipt verifies offline with only the JWKS fetched from the public
endpoint; a tampered one, one with a duplicate key or one signed by an unknown key does
not; a rotation keeps old receipts verifying; the callback verifies with the
`standardwebhooks` library; a rewritten audit entry is caught by a signed checkpoint
and no longer matches the receipt.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks

from store import ArtifactStore
from tests.sql.tamper import restore, rewrite_entry, snapshot
from tests.support import processes
from tests.support.processes import ServiceStack
from tests.support.receiver import Receiver
from tests.support.tiny_model import tiny_facts

pytestmark = pytest.mark.timeout(600)
WHSEC = "whsec_" + base64.b64encode(b"receipts-test-webhook-key-0123456789").decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    env = {"ZEROUNLEARN_CALLBACK_SECRET": WHSEC}
    with processes.service_stack(tmp_path_factory.mktemp("receipts"), db_name="receipts-stack",
                                 api_env=env) as s:
        yield s


@pytest.fixture(scope="module")
def forgotten(stack: ServiceStack, tiny_gpt2_dir: Path) -> dict[str, Any]:
    """A real forget with a callback whose first delivery fails: the job, the deliveries."""
    c = stack.client
    model = processes.register_ready(c, str(tiny_gpt2_dir))
    fact = tiny_facts()[0]
    record = {k: fact[k] for k in ("prompt", "subject", "answer")}
    receiver = Receiver(failures=1)
    try:
        response = c.post(f"/v1/models/{model['id']}/forget",
                          json={"records": [record], "callback_url": receiver.url})
        assert response.status_code == 202, response.text
        job = processes.wait_job(c, response.json()["job_id"])
        assert job["status"] == "succeeded", job
        processes.wait_until(lambda: len(receiver.calls) >= 2, 30, 0.1, "2 deliveries")
    finally:
        receiver.close()
    return {"job": job, "calls": list(receiver.calls)}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`zerounlearn ...` as a subprocess, pointed at no server at all."""
    env = {"PATH": "/usr/bin:/bin", "ZEROUNLEARN_URL": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=processes.REPO,
                          env=env, capture_output=True, text=True, timeout=60)


def public_jwks(stack: ServiceStack, path: Path) -> Path:
    """The JWKS, fetched with no API key (`zerounlearn receipts keys` against the API)."""
    assert httpx.get(f"{stack.api.extra['url']}/v1/receipts/keys").status_code == 200
    done = cli("receipts", "keys", "--url", stack.api.extra["url"], "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path


def write(path: Path, doc: Any) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return path


def test_callback_verifies_with_the_standard_webhooks_library(
    forgotten: dict[str, Any]
) -> None:
    calls = forgotten["calls"]
    webhook = standardwebhooks.Webhook(WHSEC)
    for call in calls:
        body = webhook.verify(call["raw"], call["headers"])
        assert body["job_id"] == forgotten["job"]["id"] and body["event"] == "job.finished"
    ids = {call["headers"]["webhook-id"] for call in calls}
    assert ids == {f"msg_{forgotten['job']['id']}"}  # the same id on the retry
    assert [call["headers"]["ZeroUnlearn-Attempt"] for call in calls[:2]] == ["1", "2"]
    forged = calls[-1]["raw"].replace(b"succeeded", b"failed")
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        webhook.verify(forged, calls[-1]["headers"])
    other = standardwebhooks.Webhook("whsec_" + base64.b64encode(b"x" * 32).decode())
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        other.verify(calls[-1]["raw"], calls[-1]["headers"])


def test_receipt_verifies_offline_with_only_the_public_jwks(
    stack: ServiceStack, forgotten: dict[str, Any], tmp_path: Path
) -> None:
    c, job = stack.client, forgotten["job"]
    receipt = c.get(f"/v1/jobs/{job['id']}/receipt").json()
    assert receipt == json.loads(forgotten["calls"][-1]["raw"])["receipt"]
    assert receipt["signature"]["alg"] == "EdDSA"
    jwks = public_jwks(stack, tmp_path / "jwks.json")
    assert receipt["signature"]["kid"] == json.loads(jwks.read_text())["keys"][0]["kid"]

    good = cli("receipts", "verify", str(write(tmp_path / "r.json", receipt)), "--keys", str(jwks))
    assert good.returncode == 0 and "genuine" in good.stdout, good.stderr

    tampered = json.loads(json.dumps(receipt))
    first = tampered["receipt"]["record_hashes"][0]
    tampered["receipt"]["record_hashes"][0] = ("0" if first[0] != "0" else "1") + first[1:]
    bad = cli("receipts", "verify", str(write(tmp_path / "t.json", tampered)), "--keys", str(jwks))
    assert bad.returncode == 1 and "does not match" in bad.stderr, bad

    # a second "version" member: a lax parser would read the receipt with the later one
    text = json.dumps(receipt).replace('"version": ', '"version": "v9", "version": ', 1)
    dup = cli("receipts", "verify", str(write(tmp_path / "d.json", text)), "--keys", str(jwks))
    assert dup.returncode == 1 and "duplicate object key 'version'" in dup.stderr, dup
    refused = c.post("/v1/receipts/verify", content=text,
                     headers={"content-type": "application/json"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_receipt"

    unknown = write(tmp_path / "other.json", {"keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"}]})
    foreign = cli("receipts", "verify", str(tmp_path / "r.json"), "--keys", str(unknown))
    assert foreign.returncode == 1 and "unknown key id" in foreign.stderr, foreign

    # the receipt names the job's own success entry of the audit trail
    entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
    succeeded = [e for e in entries
                 if e["action"] == "job.succeeded" and e["ids"].get("job") == job["id"]]
    assert receipt["receipt"]["audit_entry"] == {"seq": succeeded[0]["seq"],
                                                 "hash": succeeded[0]["hash"]}
    online = c.post("/v1/receipts/verify", json=receipt).json()
    assert online == {"genuine": True, "reason": None, "kid": receipt["signature"]["kid"],
                      "audit_entry_matches": True}


def test_rotation_keeps_old_receipts_verifying(
    stack: ServiceStack, forgotten: dict[str, Any], tmp_path: Path
) -> None:
    c, job_id = stack.client, forgotten["job"]["id"]
    old_jwks = public_jwks(stack, tmp_path / "old-jwks.json")
    old = write(tmp_path / "old.json", c.get(f"/v1/jobs/{job_id}/receipt").json())
    rotated = c.post("/v1/receipts/keys/rotate")
    assert rotated.status_code == 201, rotated.text
    new_receipt = c.get(f"/v1/jobs/{job_id}/receipt").json()
    assert new_receipt["signature"]["kid"] == rotated.json()["kid"]
    assert new_receipt["receipt"] == json.loads(old.read_text())["receipt"]  # same content
    new = write(tmp_path / "new.json", new_receipt)
    jwks = public_jwks(stack, tmp_path / "jwks.json")
    for receipt in (old, new):
        done = cli("receipts", "verify", str(receipt), "--keys", str(jwks))
        assert done.returncode == 0 and "genuine" in done.stdout, done.stderr
    stale = cli("receipts", "verify", str(new), "--keys", str(old_jwks))
    assert stale.returncode == 1 and "unknown key id" in stale.stderr


def test_a_rewritten_audit_entry_is_caught_by_a_checkpoint(
    stack: ServiceStack, forgotten: dict[str, Any], tmp_path: Path
) -> None:
    c, job_id = stack.client, forgotten["job"]["id"]
    receipt = c.get(f"/v1/jobs/{job_id}/receipt").json()
    made = c.post("/v1/audit/checkpoints")
    assert made.status_code in (200, 201), made.text
    checkpoint = write(tmp_path / "checkpoint.json", made.json())
    jwks = public_jwks(stack, tmp_path / "jwks.json")
    done = cli("receipts", "verify", str(checkpoint), "--keys", str(jwks))
    assert done.returncode == 0 and "genuine" in done.stdout, done.stderr
    assert c.get("/v1/audit/verify").json()["valid"] is True

    # a store writer rewrites the job's success entry (another record hash) and
    # recomputes every later hash, so that the chain alone still holds
    seq = receipt["receipt"]["audit_entry"]["seq"]
    store = ArtifactStore(stack.data_dir)  # the stack's database
    original = snapshot(store)
    try:
        rewrite_entry(store, seq, lambda e: e.update(record_hashes=["00" * 32]))
        verdict = c.get("/v1/audit/verify").json()
        assert verdict["valid"] is False and "rewritten" in verdict["reason"], verdict
        assert seq <= verdict["broken_at"] <= made.json()["checkpoint"]["seq"]
        check = c.post("/v1/receipts/verify", json=receipt).json()
        assert check["genuine"] is True and check["audit_entry_matches"] is False
        entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
        entry = next(e for e in entries if e["seq"] == seq)
        assert entry["hash"] != receipt["receipt"]["audit_entry"]["hash"]
        refused = c.post("/v1/audit/checkpoints")
        assert refused.status_code in (200, 409)  # never a new checkpoint of this trail
        assert refused.status_code == 200 or (
            refused.json()["error"]["code"] == "audit_checkpoint_mismatch")
    finally:
        restore(store, original)
        store.close()
    assert c.get("/v1/audit/verify").json()["valid"] is True
