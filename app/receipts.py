"""Deletion receipts: what a succeeded forget job did, signed with HMAC-SHA256.

The receipt is built from stored facts only (the job document and the new version's
manifest), so it is the same every time it is asked for, and it holds no request text:
record hashes are the salted ones of the manifest. The signature covers the canonical
JSON (sorted keys, no spaces, UTF-8) of the `receipt` object; its `key_id` names the key
(first 16 hex digits of the key's sha256) so a rotated key is recognised as such.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

from app.errors import ConflictError
from app.settings import Settings
from store import ArtifactStore
from store.hashing import canonical_json

RECEIPT_TYPE = "zerounlearn.deletion-receipt/v1"
RECEIPT_KEY = "receipt-key"
"""Name of the generated key file (store secrets) when ZEROUNLEARN_RECEIPT_KEY is unset."""


def receipt_key(settings: Settings, store: ArtifactStore) -> bytes:
    if settings.receipt_key is not None:
        return settings.receipt_key.get_secret_value().encode()
    return store.secret(RECEIPT_KEY)


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def sign(key: bytes, receipt: dict[str, Any]) -> dict[str, Any]:
    value = hmac.new(key, canonical_json(receipt), hashlib.sha256).hexdigest()
    return {"alg": "HMAC-SHA256", "key_id": key_id(key), "value": value}


def build_receipt(store: ArtifactStore, key: bytes, job: dict[str, Any]) -> dict[str, Any]:
    """The signed receipt of a succeeded forget job; 409 for any other job."""
    if job.get("kind") != "forget" or job.get("status") != "succeeded":
        raise ConflictError(
            f"job {job['id']} is a {job.get('status')} {job.get('kind')} job; receipts exist "
            "for succeeded forget jobs only",
            code="no_receipt",
        )
    result = job.get("result") or {}
    manifest = store.get_version(job["model_id"], result["version"])
    metrics = result.get("metrics") or {}
    receipt = {
        "type": RECEIPT_TYPE,
        "request_id": job["id"],
        "model_id": job["model_id"],
        "base_version": job.get("version"),
        "version": result["version"],
        "record_hashes": _own_record_hashes(store, job, manifest),
        "patch_sha256": (manifest.get("patch") or {}).get("sha256"),
        "verification": _finite({k: metrics.get(k) for k in ("before", "after")}),
        "issued_at": job.get("finished_at"),
    }
    return {"receipt": receipt, "signature": sign(key, receipt)}


def _own_record_hashes(
    store: ArtifactStore, job: dict[str, Any], manifest: dict[str, Any]
) -> list[str]:
    """The hashes of THIS request's records. A coalesced version holds the records of
    several requests; the request document keeps its own hashes after the text is
    purged. Older requests without them fall back to the version's."""
    request = store.requests.find(job["id"]) or {}
    own = request.get("record_hashes")
    if own:
        return list(own)
    return [r["sha256"] for r in manifest.get("records", [])]


def check_receipt(key: bytes, receipt: dict[str, Any], signature: dict[str, Any]) -> dict:
    """{"genuine", "reason"}: does the signature match this server's key and content?"""
    if signature.get("key_id") != key_id(key):
        return {"genuine": False, "reason": "signed with a key this server does not hold"}
    try:
        expected = sign(key, receipt)["value"]
    except ValueError:
        return {"genuine": False, "reason": "the receipt is not canonical JSON"}
    if not hmac.compare_digest(expected, str(signature.get("value", ""))):
        return {"genuine": False, "reason": "the signature does not match the receipt"}
    if receipt.get("type") != RECEIPT_TYPE:
        return {"genuine": False, "reason": "not a deletion receipt"}
    return {"genuine": True, "reason": None}


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
