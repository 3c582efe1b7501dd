"""JSON documents as objects: one encoding everywhere, and small read/write helpers."""

from __future__ import annotations

import json
from typing import Any

from store.errors import CorruptDocument


def dump(doc: Any) -> bytes:
    """The stored form of a document (the bytes the file store always wrote)."""
    return (json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()


def load(data: bytes, key: str) -> dict[str, Any]:
    """A stored document; CorruptDocument when it is not a JSON object."""
    name = key.rsplit("/", 1)[-1]
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptDocument(f"{name} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise CorruptDocument(f"{name} does not hold a JSON object")
    return doc
