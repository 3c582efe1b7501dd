"""Deletion receipts: what a succeeded forget job did, signed with Ed25519.

The receipt is built from stored facts only (the job document, the new version's
manifest, the job's audit entry), so its content is the same every time it is asked
for, and it holds no request text: record hashes are the salted ones of the manifest.
The signature (app.signing) covers the RFC 8785 canonical JSON of the `receipt` object;
anyone can check it offline against the JWKS of GET /v1/receipts/keys
(client.receipts_verify). `audit_entry` names the job's `job.succeeded` entry of the
audit trail (seq and hash): a store writer who rewrites that entry no longer matches
the receipt, and one who rewrites the whole chain after it no longer matches the
signed audit checkpoints (app.checkpoints).
"""

from __future__ import annotations

import math
from typing import Any

from app.errors import ConflictError
from app.signing import ReceiptKeys
from app.version_guard import seal_overrides_of
from client.receipts_verify import RECEIPT_TYPE, Verdict, check_document
from store import ArtifactStore
from store.enums import JobKind, JobStatus

SUCCEEDED_ACTION = "job.succeeded"


def build_receipt(store: ArtifactStore, keys: ReceiptKeys, job: dict[str, Any]) -> dict[str, Any]:
    """The signed receipt of a succeeded forget job; 409 for any other job."""
    if job.get("kind") != JobKind.FORGET or job.get("status") != JobStatus.SUCCEEDED:
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
        "audit_entry": audit_reference(store, job),
        "seal_overrides": seal_overrides_of(store, job),
    }
    return {"receipt": receipt, "signature": keys.sign(receipt)}


def audit_reference(store: ArtifactStore, job: dict[str, Any]) -> dict[str, Any] | None:
    """{"seq", "hash"} of the job's success entry: as the worker noted it in the job
    document when it wrote it, else (a job that ended before that note existed, or the
    instant between the two writes) found in the trail; None when there is none."""
    noted = job.get("audit_entry")
    if isinstance(noted, dict) and "seq" in noted and "hash" in noted:
        return {"seq": noted["seq"], "hash": noted["hash"]}
    entry = store.audit.find(
        lambda e: e.get("action") == SUCCEEDED_ACTION and e.get("ids", {}).get("job") == job["id"],
        job["id"].encode(),
    )
    return {"seq": entry["seq"], "hash": entry["hash"]} if entry else None


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


def check_receipt(store: ArtifactStore, keys: ReceiptKeys, doc: Any) -> dict[str, Any]:
    """What POST /v1/receipts/verify answers: the offline check against this server's
    JWKS, and whether the audit entry the receipt names is still the one in the trail."""
    verdict: Verdict = check_document(doc, keys.jwks())
    answer: dict[str, Any] = {"genuine": verdict.genuine, "reason": verdict.reason,
                              "kid": verdict.kid, "audit_entry_matches": None}
    if verdict.genuine:
        ref = doc["receipt"].get("audit_entry")
        if isinstance(ref, dict) and isinstance(ref.get("seq"), int):
            entry = store.audit.entry(ref["seq"])
            answer["audit_entry_matches"] = entry is not None and entry.get("hash") == ref.get(
                "hash")
    return answer


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
