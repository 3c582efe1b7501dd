"""Read a data directory in the layout the document store wrote before metadata moved
to SQL (local backend only): the import (store.sql.import_data_dir) reads it, and the
API and the worker refuse to start on one that was not imported.

    models/{m}/model.json  models/{m}/lifecycle.json  models/{m}/versions/vN/manifest.json
    models/{m}/versions/vN/patch.safetensors   jobs/{j}.json   keys/{k}.json
    idempotency/{sha256}.json   audit/log.jsonl   requests/{j}.json
    requests/settled/{j}.json
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from store.documents import JOB_ID_RE, MODEL_ID_RE, SHA256_RE, version_number
from store.errors import CorruptDocument
from store.keys import KEY_ID_RE

MARKERS = ("models/*/model.json", "jobs/j-*.json", "keys/k-*.json", "audit/log.jsonl")
"""Any of these means the directory holds old metadata documents."""


def has_documents(root: Path | str) -> bool:
    """Whether the data directory holds metadata documents of the old layout."""
    base = Path(root)
    return any(next(base.glob(pattern), None) is not None for pattern in MARKERS)


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        raise CorruptDocument(f"{path.name} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise CorruptDocument(f"{path.name} is not a JSON object")
    return doc


def _named(directory: Path, pattern: Any) -> Iterator[tuple[str, Path]]:
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.suffix == ".json" and path.is_file() and pattern.match(path.stem):
            yield path.stem, path


class LegacyDataDir:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def models(self) -> list[dict[str, Any]]:
        """Model documents, oldest first."""
        found = []
        models = self.root / "models"
        if models.is_dir():
            for path in models.iterdir():
                if MODEL_ID_RE.match(path.name) and (path / "model.json").is_file():
                    found.append(_load(path / "model.json"))
        return sorted(found, key=lambda m: (m.get("created_at") or "", m["id"]))

    def versions(self, model_id: str) -> list[tuple[dict[str, Any], Path | None]]:
        """(manifest, its patch file or None), v0 first."""
        directory = self.root / "models" / model_id / "versions"
        found: list[tuple[int, dict[str, Any], Path | None]] = []
        if directory.is_dir():
            for path in directory.iterdir():
                number = version_number(path.name)
                if number is not None and (path / "manifest.json").is_file():
                    patch = path / "patch.safetensors"
                    found.append((number, _load(path / "manifest.json"),
                                  patch if patch.is_file() else None))
        return [(manifest, patch) for _, manifest, patch in sorted(found, key=lambda f: f[0])]

    def lifecycle(self, model_id: str) -> dict[str, Any] | None:
        path = self.root / "models" / model_id / "lifecycle.json"
        return _load(path) if path.is_file() else None

    def jobs(self) -> list[dict[str, Any]]:
        jobs = [_load(path) for _, path in _named(self.root / "jobs", JOB_ID_RE)]
        return sorted(jobs, key=lambda j: (j.get("created_at") or "", j["id"]))

    def keys(self) -> list[dict[str, Any]]:
        keys = [_load(path) for _, path in _named(self.root / "keys", KEY_ID_RE)]
        return sorted(keys, key=lambda k: (k.get("created_at") or "", k["id"]))

    def idempotency(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for key_hash, path in _named(self.root / "idempotency", SHA256_RE):
            yield key_hash, _load(path)

    def audit_lines(self) -> Iterator[bytes]:
        path = self.root / "audit" / "log.jsonl"
        if path.is_file():
            with open(path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        yield line

    def requests(self) -> Iterator[tuple[bool, dict[str, Any]]]:
        """(settled, request document)."""
        for settled, directory in ((False, self.root / "requests"),
                                   (True, self.root / "requests" / "settled")):
            for _, path in _named(directory, JOB_ID_RE):
                yield settled, _load(path)
