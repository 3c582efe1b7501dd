"""JSON documents as objects: one encoding everywhere, and small read/write helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from store.backends.base import ObjectBackend
from store.errors import CorruptDocument, NotFound


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


def read_doc(backend: ObjectBackend, key: str, missing: NotFound) -> dict[str, Any]:
    blob = backend.read(key)
    if blob is None:
        raise missing
    return load(blob.data, key)


def update_doc(
    backend: ObjectBackend,
    key: str,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    missing: NotFound,
) -> dict[str, Any] | None:
    """Atomic read-modify-write of an existing document: change(doc) returns the new
    document or None (write nothing). Returns the document written, or None."""
    written: list[dict[str, Any]] = []

    def on_bytes(data: bytes | None) -> bytes | None:
        if data is None:
            raise missing
        new = change(load(data, key))
        written[:] = [new] if new is not None else []
        return dump(new) if new is not None else None

    backend.update(key, on_bytes)
    return written[0] if written else None
