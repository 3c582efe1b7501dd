"""What a store writer with file access could do to the audit trail (local store): rewrite
one entry and recompute every later hash, so that the chain alone still verifies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store.audit import GENESIS, entry_hash
from store.hashing import canonical_json


def rewrite_entry(log: Path, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply `change` to entry `seq` of the JSON-lines trail at `log`, then re-chain."""
    entries = [json.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    prev = GENESIS
    for entry in entries:
        if entry["seq"] == seq:
            change(entry)
        entry["prev"] = prev
        entry["hash"] = entry_hash(entry)
        prev = entry["hash"]
    log.write_bytes(b"".join(canonical_json(e) + b"\n" for e in entries))
