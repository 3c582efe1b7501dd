"""Receipt keys, offline checks and signed audit checkpoints, through the real FastAPI app
(a real Redis, a real store on disk; no worker: the forget end to end is in
test_receipts_ed25519.py).

The offline checker (client.receipts_verify) against RFC vectors and tampering; the public
JWKS; key rotation and a configured key; checkpoints made on demand and by the
reconciler; a rewritten or truncated audit trail caught by them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from app.settings import Settings
from app.signing import SigningKey
from client.receipts_verify import (
    RECEIPT_TYPE,
    InvalidJson,
    b64url,
    b64url_decode,
    check_document,
    check_receipt_text,
    parse_strict,
    public_jwk,
    thumbprint,
)
from store import ArtifactStore
from tests.sql.tamper import edit_entry, keep_first, restore, rewrite_entry, snapshot
from tests.support import processes
from tests.support.redis_dbs import flushed_redis

ADMIN = "receipt-keys-admin-token-0123456789abcdef"
SEED = bytes(range(32))
BODY = {"type": RECEIPT_TYPE, "request_id": "j-0123456789abcdef", "record_hashes": ["ab" * 32],
        "verification": {"after": {"efficacy": 0.25}}, "audit_entry": {"seq": 3, "hash": "c"}}


def bearer(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed(body: dict[str, Any], seed: bytes = SEED) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a receipt document signed with `seed`, the JWKS holding that key)."""
    key = SigningKey.from_seed(seed)
    return {"receipt": body, "signature": key.sign(body)}, {"keys": [key.jwk]}


# ------------------------------------------------------------ the offline checker
def test_thumbprint_is_rfc_7638_of_the_rfc_8037_example() -> None:
    # RFC 8037 appendix A.3
    assert thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo") == (
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
    raw = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    jwk = public_jwk(raw)
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["alg"] == "EdDSA"
    assert jwk == SigningKey.from_seed(SEED).jwk and jwk["kid"] == thumbprint(jwk["x"])


def test_a_genuine_receipt_verifies_whatever_its_key_order_and_spacing() -> None:
    doc, jwks = signed(BODY)
    reordered = json.dumps({"signature": doc["signature"],
                            "receipt": dict(reversed(list(BODY.items())))}, indent=3)
    verdict = check_receipt_text(reordered, jwks)
    assert verdict.genuine and verdict.reason is None and verdict.kid == jwks["keys"][0]["kid"]


@pytest.mark.parametrize("tamper, reason", [
    (lambda d: d["receipt"]["record_hashes"].append("00" * 32), "does not match"),
    (lambda d: d["receipt"]["verification"]["after"].update(efficacy=0.5), "does not match"),
    (lambda d: d["receipt"].update(type="zerounlearn.other/v1"), "does not match"),
    (lambda d: d["signature"].update(kid="A" * 43), "unknown key id"),
    (lambda d: d["signature"].update(value=b64url(b64url_decode(d["signature"]["value"])[:63])),
     "wrong length"),
    (lambda d: d["signature"].update(value="!" * 86), "base64url"),
    (lambda d: d["signature"].update(alg="HMAC-SHA256"), "EdDSA"),
    (lambda d: d["signature"].update(extra=1), "unexpected members"),
    (lambda d: d.update(note="hello"), "exactly the members"),
])
def test_a_changed_receipt_or_signature_is_not_genuine(tamper: Any, reason: str) -> None:
    doc, jwks = signed(BODY)
    doc = json.loads(json.dumps(doc))
    tamper(doc)
    verdict = check_document(doc, jwks)
    assert not verdict.genuine and reason in verdict.reason


def test_no_other_last_character_of_the_signature_verifies() -> None:
    """86 characters carry 64 bytes: the last one holds 2 signature bits and 4 unused ones.
    A lax decoder ignores the unused bits, so 3 other characters would decode to the same
    signature; the verifier refuses any text that is not the canonical encoding."""
    doc, jwks = signed(BODY)
    value = doc["signature"]["value"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for char in alphabet.replace(value[-1], ""):
        changed = json.loads(json.dumps(doc))
        changed["signature"]["value"] = value[:-1] + char
        assert not check_document(changed, jwks).genuine, char


def test_a_key_set_entry_that_is_not_the_key_it_names_does_not_count() -> None:
    doc, jwks = signed(BODY)
    other = SigningKey.from_seed(b"\x07" * 32).jwk
    lying = {"keys": [{**other, "kid": doc["signature"]["kid"]}]}  # right kid, wrong x
    assert "unknown key id" in check_document(doc, lying).reason
    assert not check_document(doc, {"keys": [other]}).genuine  # another server's key


def test_duplicate_keys_and_non_json_numbers_are_refused() -> None:
    doc, jwks = signed(BODY)
    text = json.dumps(doc)
    # a second "request_id" that a lax parser would keep instead of the signed one
    dup = text.replace('"request_id": ', '"request_id": "j-ffffffffffffffff", "request_id": ')
    with pytest.raises(InvalidJson, match="duplicate object key 'request_id'"):
        parse_strict(dup)
    verdict = check_receipt_text(dup, jwks)
    assert not verdict.genuine and "duplicate object key" in verdict.reason
    nested = text.replace('"efficacy": 0.25', '"efficacy": 0.25, "efficacy": 0.0')
    assert "duplicate" in check_receipt_text(nested, jwks).reason
    for bad in ('{"a": NaN}', '{"a": Infinity}', "{", b"\xff"):
        with pytest.raises(InvalidJson):
            parse_strict(bad)
    assert check_receipt_text(text, jwks).genuine  # the untouched text still passes


# ------------------------------------------------------------------ the live API
def make_settings(tmp_path: Path, redis_url: str, **overrides: object) -> Settings:
    values: dict = {"redis_url": redis_url, "data_dir": tmp_path / "data", "admin_token": ADMIN,
                    "reconcile_interval_s": 3600}
    return Settings(**{**values, **overrides})


@pytest.fixture
def settings(tmp_path: Path, redis: Redis, redis_url: str) -> Settings:
    return make_settings(tmp_path, redis_url)


def new_key(client: TestClient, role: str) -> str:
    response = client.post("/v1/keys", json={"role": role}, headers=bearer())
    assert response.status_code == 201, response.text
    return response.json()["key"]


def test_jwks_is_public_and_rotation_keeps_old_keys(
    client: TestClient, settings: Settings
) -> None:
    response = client.get("/v1/receipts/keys")  # no API key at all
    assert response.status_code == 200 and "max-age" in response.headers["cache-control"]
    first = response.json()["keys"]
    assert len(first) == 1 and first[0]["kid"] == thumbprint(first[0]["x"])
    assert set(first[0]) == {"kty", "crv", "x", "kid", "alg", "use"}
    secret = settings.data_dir / "secrets" / "receipt-ed25519-0001.key"
    assert secret.stat().st_mode & 0o077 == 0  # the private key: owner only
    assert client.get("/v1/receipts/keys").json()["keys"] == first  # stable

    viewer = new_key(client, "viewer")
    refused = client.post("/v1/receipts/keys/rotate", headers=bearer(viewer))
    assert refused.status_code == 403
    rotated = client.post("/v1/receipts/keys/rotate", headers=bearer())
    assert rotated.status_code == 201, rotated.text
    keys = client.get("/v1/receipts/keys").json()["keys"]
    assert [k["kid"] for k in keys] == [rotated.json()["kid"], first[0]["kid"]]
    again = client.post("/v1/receipts/keys/rotate", headers=bearer()).json()
    assert [k["kid"] for k in client.get("/v1/receipts/keys").json()["keys"]] == [
        again["kid"], rotated.json()["kid"], first[0]["kid"]]
    audit = client.get("/v1/audit", headers=bearer()).json()["items"]
    rotations = [e["detail"] for e in audit if e["action"] == "receipt_key.rotated"]
    assert rotations == [{"kid": rotated.json()["kid"], "previous": first[0]["kid"]},
                         {"kid": again["kid"], "previous": rotated.json()["kid"]}]


def test_a_configured_key_signs_and_cannot_be_rotated_here(
    tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url, receipt_key=SEED.hex())
    with flushed_redis(redis_url), TestClient(create_app(settings)) as client:
        keys = client.get("/v1/receipts/keys").json()["keys"]
        assert keys == [SigningKey.from_seed(SEED).jwk]
        refused = client.post("/v1/receipts/keys/rotate", headers=bearer())
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "receipt_key_configured"
    # the operator changes the setting: the old public key stays listed
    settings = make_settings(tmp_path, redis_url, receipt_key=(b"\x01" * 32).hex())
    with flushed_redis(redis_url), TestClient(create_app(settings)) as client:
        kids = [k["kid"] for k in client.get("/v1/receipts/keys").json()["keys"]]
        assert kids == [SigningKey.from_seed(b"\x01" * 32).kid, SigningKey.from_seed(SEED).kid]


def test_verify_endpoint_refuses_duplicate_keys_and_unknown_signers(client: TestClient) -> None:
    viewer = new_key(client, "viewer")
    doc, _ = signed(BODY, seed=b"\x09" * 32)  # a key this server never had
    answer = client.post("/v1/receipts/verify", json=doc, headers=bearer(viewer))
    assert answer.status_code == 200
    assert answer.json()["genuine"] is False and "unknown key id" in answer.json()["reason"]
    dup = json.dumps(doc).replace('"request_id": ', '"request_id": "x", "request_id": ')
    refused = client.post("/v1/receipts/verify", content=dup, headers={
        **bearer(viewer), "content-type": "application/json"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_receipt"
    assert "duplicate object key 'request_id'" in refused.json()["error"]["message"]
    wrong = client.post("/v1/receipts/verify", json={"receipt": {}}, headers=bearer(viewer))
    assert wrong.status_code == 422 and "signature" in wrong.json()["error"]["message"]
    assert client.post("/v1/receipts/verify", json=doc).status_code == 401


def test_checkpoints_catch_a_rewritten_or_truncated_trail(
    client: TestClient, settings: Settings
) -> None:
    store = ArtifactStore(settings.data_dir)
    viewer = new_key(client, "viewer")
    for role in ("operator", "viewer", "operator"):
        new_key(client, role)
    made = client.post("/v1/audit/checkpoints", headers=bearer())
    assert made.status_code == 201, made.text
    checkpoint = made.json()
    head = store.audit.head()
    assert checkpoint["checkpoint"]["seq"] == head["seq"] == 4
    assert checkpoint["checkpoint"]["hash"] == head["hash"]
    jwks = client.get("/v1/receipts/keys").json()
    assert check_document(checkpoint, jwks, "checkpoint", checkpoint["checkpoint"]["type"])
    same = client.post("/v1/audit/checkpoints", headers=bearer())  # the head did not move
    assert same.status_code == 200 and same.json() == checkpoint
    assert client.post("/v1/audit/checkpoints", headers=bearer(viewer)).status_code == 403
    # a rotation later: the checkpoint (old key) still verifies
    client.post("/v1/receipts/keys/rotate", headers=bearer())
    listed = client.get("/v1/audit/checkpoints", headers=bearer(viewer)).json()
    assert listed == {"items": [checkpoint], "next_after": None}
    verdict = client.get("/v1/audit/verify", headers=bearer()).json()
    assert verdict["valid"] is True and verdict["checkpoints"] == 1

    # an insider rewrites entry 2 (the viewer key becomes an admin key) and re-chains
    original = snapshot(store)
    rewrite_entry(store, 2, lambda e: e["detail"].update(role="admin"))
    assert store.audit.verify()["valid"] is True  # the chain alone cannot tell
    verdict = client.get("/v1/audit/verify", headers=bearer()).json()
    assert verdict["valid"] is False and verdict["broken_at"] == 4
    assert "rewritten" in verdict["reason"]
    # (the rotation moved the head) the rewritten trail is not signed
    refused = client.post("/v1/audit/checkpoints", headers=bearer())
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "audit_checkpoint_mismatch"

    # ... or removes the last entries
    restore(store, original)
    keep_first(store, 2)
    verdict = client.get("/v1/audit/verify", headers=bearer()).json()
    assert verdict["valid"] is False and "entry 4 is gone" in verdict["reason"]

    # an edit that breaks the chain is never signed
    restore(store, original)
    edit_entry(store, 2, lambda e: e["detail"].update(role="admin"))
    refused = client.post("/v1/audit/checkpoints", headers=bearer())
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "audit_chain_broken"


def test_the_reconciler_signs_a_moved_head_periodically(
    tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url, reconcile_interval_s=0.2,
                             audit_checkpoint_interval_s=0.5)
    store = ArtifactStore(settings.data_dir)

    def seqs() -> list[int]:
        page = client.get("/v1/audit/checkpoints", headers=bearer()).json()
        return [c["checkpoint"]["seq"] for c in page["items"]]

    with flushed_redis(redis_url), TestClient(create_app(settings)) as client:
        new_key(client, "viewer")
        processes.wait_until(lambda: seqs() == [1], 10, 0.1, "a first checkpoint")
        new_key(client, "viewer")
        new_key(client, "viewer")
        processes.wait_until(lambda: seqs()[-1:] == [3], 10, 0.1, "a checkpoint of entry 3")
        assert store.audit.head()["seq"] == 3  # checkpoints add no audit entry
        seen = seqs()
        time.sleep(1.5)  # three checkpoint intervals
        assert seqs() == seen  # the head did not move: no new checkpoint
