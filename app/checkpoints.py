"""Signed audit checkpoints: the audit trail's head (seq, hash), signed with the receipt key.

One object per signed head, `audit/checkpoints/{seq:012d}.json` (put_if_absent: a head is
signed once), holding {"checkpoint": {type, seq, hash, time}, "signature": {...}} in the
receipts' format, so the same offline check applies. The chain, and the trail against
the earlier checkpoints, are verified before a head is signed: a broken or rewritten
trail is never vouched for. Afterwards, anyone holding a checkpoint (or a receipt, which
names its own audit entry) catches a store writer who rewrites history: editing an
entry breaks the chain, and recomputing every later hash changes the hash at each
signed seq. `verify_checkpoints` runs that comparison. (A writer who also deletes the
checkpoint files is caught by the copies that auditors keep outside the store.)

Made on demand (POST /v1/audit/checkpoints) and by the reconciler when the head moved
and the last checkpoint is older than ZEROUNLEARN_AUDIT_CHECKPOINT_INTERVAL_S.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from app.errors import ConflictError
from app.signing import ReceiptKeys
from client.receipts_verify import CHECKPOINT_TYPE, check_document
from store import ArtifactStore, utc_now

PREFIX = "audit/checkpoints/"


def _key(seq: int) -> str:
    return f"{PREFIX}{seq:012d}.json"


def _read(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    blob = store.backend.read(key)
    return json.loads(blob.data) if blob is not None else None


def make_checkpoint(store: ArtifactStore, keys: ReceiptKeys) -> tuple[dict[str, Any], bool]:
    """(the checkpoint of the current head, whether it is new); 409 for an empty or a
    broken chain, or one that no longer matches an earlier checkpoint."""
    chain = store.audit.verify()
    if not chain["valid"]:
        raise ConflictError(f"the audit trail is broken at line {chain['broken_at']} "
                            f"({chain['reason']}): not signing it", code="audit_chain_broken")
    if chain["entries"] == 0:
        raise ConflictError("the audit trail is empty: nothing to sign", code="audit_empty")
    signed = verify_checkpoints(store, keys.jwks())
    if not signed["valid"]:
        raise ConflictError(f"the audit trail contradicts a signed checkpoint "
                            f"({signed['reason']}): not signing it",
                            code="audit_checkpoint_mismatch")
    seq = chain["entries"]
    existing = _read(store, _key(seq))
    if existing is not None:
        return existing, False
    body = {"type": CHECKPOINT_TYPE, "seq": seq, "hash": chain["head"], "time": utc_now()}
    doc = {"checkpoint": body, "signature": keys.sign(body)}
    if not store.backend.put_if_absent(_key(seq), json.dumps(doc, sort_keys=True).encode()):
        return _read(store, _key(seq)) or doc, False  # another process signed it first
    return doc, True


def last_checkpoint(store: ArtifactStore) -> dict[str, Any] | None:
    names = store.backend.list_keys(PREFIX)
    return _read(store, names[-1]) if names else None


def due(store: ArtifactStore, interval_s: float, now: float | None = None) -> bool:
    """Is a periodic checkpoint due: the head moved past the last one, which is older
    than interval_s (or there is none)?"""
    last = last_checkpoint(store)
    if last is not None:
        made = datetime.fromisoformat(last["checkpoint"]["time"].replace("Z", "+00:00"))
        if (now if now is not None else time.time()) - made.timestamp() < interval_s:
            return False
    head = store.audit.head()
    return head is not None and (last is None or head["seq"] > last["checkpoint"]["seq"])


def list_checkpoints(
    store: ArtifactStore, after: int = 0, limit: int = 100
) -> tuple[list[dict[str, Any]], int | None]:
    """Checkpoints with seq > after, oldest first, at most `limit`; next page's `after`."""
    names = [n for n in store.backend.list_keys(PREFIX) if _seq(n) > after]
    items = [doc for n in names[:limit] if (doc := _read(store, n)) is not None]
    more = len(names) > limit and items
    return items, (items[-1]["checkpoint"]["seq"] if more else None)


def _seq(name: str) -> int:
    return int(name.rsplit("/", 1)[-1].split(".", 1)[0])


def verify_checkpoints(store: ArtifactStore, jwks: dict[str, Any]) -> dict[str, Any]:
    """Does the trail still hold, at every signed seq, the signed hash? The first
    failure (a bad signature, a rewritten or a removed entry) is reported."""
    signed: dict[int, str] = {}
    for name in store.backend.list_keys(PREFIX):
        try:
            doc = _read(store, name)
        except ValueError:
            doc = None
        verdict = check_document(doc, jwks, "checkpoint", CHECKPOINT_TYPE)
        if not verdict.genuine or doc["checkpoint"].get("seq") != _seq(name):  # type: ignore[index]
            return _failed(len(signed), _seq(name),
                           f"checkpoint {_seq(name)} is not genuine: {verdict.reason}")
        signed[_seq(name)] = doc["checkpoint"]["hash"]  # type: ignore[index]
    found: dict[int, Any] = {}
    last = 0
    for entry in store.audit.entries():
        if isinstance(entry.get("seq"), int):
            last = max(last, entry["seq"])
        if entry.get("seq") in signed:
            found[entry["seq"]] = entry.get("hash")
    for seq in sorted(signed):
        if seq not in found:
            return _failed(len(signed), seq, f"entry {seq} is gone, but a checkpoint signed "
                           f"it (the trail ends at {last})")
        if found[seq] != signed[seq]:
            return _failed(len(signed), seq, f"the trail's hash at entry {seq} is not the "
                           "signed one: history before it was rewritten")
    return {"checkpoints": len(signed), "valid": True, "broken_at": None, "reason": None}


def _failed(count: int, seq: int, reason: str) -> dict[str, Any]:
    return {"checkpoints": count, "valid": False, "broken_at": seq, "reason": reason}
