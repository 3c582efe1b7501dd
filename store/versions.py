"""Patch blobs of immutable versions. The manifest is a row of the versions table
(store.sql.repositories.models.VersionRepository); the patch stays a blob on the object
backend, content-addressed: `models/{id}/patches/{sha256}.safetensors`.

Publishing uploads the patch first (the same bytes once), then inserts the manifest
under the next free vN in one transaction. A crash between the two leaves an
unreferenced patch blob, never a version. Locally patch_path() is the blob's own file;
on an object store it downloads the patch into the local cache once, checked against the
manifest's sha256 (versions are immutable, so the cached file never goes stale).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from store.backends.base import ObjectBackend
from store.backends.local import LocalBackend
from store.errors import InvalidDocument, StoreError
from store.files import TMP_PREFIX

PATCH_FILE = "patch.safetensors"
"""A version's patch file, in the local cache of an object store and in the layout of
old data directories (models/{id}/versions/vN/patch.safetensors)."""


def patch_key(model_id: str, sha256: str) -> str:
    return f"models/{model_id}/patches/{sha256}.safetensors"


class PatchBlobs:
    def __init__(self, backend: ObjectBackend, cache_root: Path) -> None:
        self.backend = backend
        self.cache_root = cache_root
        self.local = isinstance(backend, LocalBackend)

    def upload(
        self, model_id: str, patch_file: Path, described: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Store the patch's bytes (once per sha256); returns the manifest's "patch"."""
        if not patch_file.is_file():
            raise InvalidDocument(f"patch file {patch_file.name} does not exist")
        size, sha256 = size_and_sha256(patch_file)
        described = dict(described or {})
        if described.get("sha256") not in (None, sha256):
            raise InvalidDocument("patch sha256 in the manifest does not match the patch file")
        key = patch_key(model_id, sha256)
        if not self.backend.exists(key):  # content-addressed: the same bytes once
            self.backend.upload_file(patch_file, key)
        return {**described, "bytes": size, "sha256": sha256,
                "layers": described.get("layers", [])}

    def remember(self, model_id: str, version: str, patch_file: Path) -> None:
        """This machine made the patch: keep a copy in the local cache (object stores)."""
        if not self.local:
            with contextlib.suppress(OSError):
                _copy(patch_file, self.cached(model_id, version))

    def cached(self, model_id: str, version: str) -> Path:
        return self.cache_root / "models" / model_id / "versions" / version / PATCH_FILE

    def patch_path(self, model_id: str, version: str, manifest: dict[str, Any]) -> Path:
        patch = manifest["patch"]
        key = patch_key(model_id, patch["sha256"])
        if isinstance(self.backend, LocalBackend):
            return self.backend.path(key)
        path = self.cached(model_id, version)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == patch["bytes"]:
                return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            self.backend.download_file(key, tmp)
        except FileNotFoundError:
            raise StoreError(f"the patch of {model_id}/{version} is missing from the "
                             "object store") from None
        try:
            if size_and_sha256(tmp)[1] != patch["sha256"]:
                raise StoreError(f"the patch of {model_id}/{version} does not match its "
                                 "manifest's sha256")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{dst.name}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def size_and_sha256(path: Path, chunk: int = 1 << 20) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
