"""The audit trail's hash chain: how an entry's hash is computed and how a break is
reported. The trail itself is a table (store.sql.repositories.audit: seq from the
database); these rules are shared with the import of old data directories, whose
audit/log.jsonl used the same entry format.

Each entry holds `seq`, `time`, `actor` (an API key id, "worker:<name>" or "system"),
`action`, `ids` (model, job, version, key...), `record_hashes` (salted, never text),
`detail`, `prev` (the previous entry's hash) and `hash` = sha256 of the canonical JSON of
everything else. Changing, removing or reordering an entry breaks the chain, which
`verify` reports.
"""

from __future__ import annotations

from typing import Any

from store.hashing import canonical_json, sha256_hex

GENESIS = "0" * 64
"""`prev` of the first entry."""


def entry_hash(entry: dict[str, Any]) -> str:
    return sha256_hex(canonical_json({k: v for k, v in entry.items() if k != "hash"}))


def _broken(count: int, seq: int, reason: str) -> dict[str, Any]:
    return {"valid": False, "entries": count, "head": None, "broken_at": seq, "reason": reason}
