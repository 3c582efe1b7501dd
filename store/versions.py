"""Where immutable versions live: a directory per version, or objects.

A version is visible exactly when its manifest is, and it is never rewritten:

- DirectoryVersions (local backend): fill `versions/.tmp-<uuid>/` (patch + manifest),
  then os.rename it to the next free `vN`; the rename fails if `vN` exists, so the
  next number is tried. A crash leaves only `.tmp-*` directories, never listed.
- ObjectVersions (object stores): upload the patch first, content-addressed, as
  `models/{id}/patches/{sha256}.safetensors`, then create
  `models/{id}/versions/vN/manifest.json` with put_if_absent at the next free N (taken:
  N+1). A crash between the two leaves an unreferenced patch object, never a version.
  patch_path() downloads the patch into the local cache once, checked against the
  manifest's sha256 (versions are immutable, so the cached file never goes stale).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from store.backends.base import ObjectBackend
from store.documents import copy_patch, version_number
from store.errors import Conflict, InvalidDocument, StoreError
from store.files import TMP_PREFIX, fsync_dir, write_json_atomic
from store.objects import dump, load

MANIFEST_FILE = "manifest.json"
PATCH_FILE = "patch.safetensors"
MAX_PUBLISH_ATTEMPTS = 1000


def _versions_key(model_id: str) -> str:
    return f"models/{model_id}/versions/"


class DirectoryVersions:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, model_id: str) -> Path:
        return self.root / "models" / model_id / "versions"

    def numbers(self, model_id: str) -> list[int]:
        versions_dir = self._dir(model_id)
        if not versions_dir.is_dir():
            return []
        found = (version_number(entry.name) for entry in versions_dir.iterdir())
        return sorted(n for n in found if n is not None)

    def read(self, model_id: str, version: str) -> dict[str, Any] | None:
        path = self._dir(model_id) / version / MANIFEST_FILE
        try:
            return load(path.read_bytes(), MANIFEST_FILE)
        except FileNotFoundError:
            return None

    def publish(
        self, model_id: str, doc: dict[str, Any], patch_file: Path | None
    ) -> dict[str, Any]:
        versions_dir = self._dir(model_id)
        versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = versions_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            if patch_file is not None:
                doc["patch"] = copy_patch(Path(patch_file), tmp / PATCH_FILE, doc["patch"])
            elif doc["patch"] is not None:
                raise InvalidDocument("manifest describes a patch but no patch file was given")
            numbers = self.numbers(model_id)
            number = numbers[-1] + 1 if numbers else 0
            for _ in range(MAX_PUBLISH_ATTEMPTS):
                doc["id"] = f"v{number}"
                write_json_atomic(tmp / MANIFEST_FILE, doc)
                try:
                    os.rename(tmp, versions_dir / doc["id"])
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    number += 1
                    continue
                fsync_dir(versions_dir)
                return doc
            raise Conflict(f"no free version number for model {model_id}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def patch_path(self, model_id: str, version: str, manifest: dict[str, Any]) -> Path:
        return self._dir(model_id) / version / PATCH_FILE


class ObjectVersions:
    def __init__(self, backend: ObjectBackend, cache_root: Path) -> None:
        self.backend = backend
        self.cache_root = cache_root

    @staticmethod
    def patch_key(model_id: str, sha256: str) -> str:
        return f"models/{model_id}/patches/{sha256}.safetensors"

    def numbers(self, model_id: str) -> list[int]:
        names = self.backend.children(_versions_key(model_id))
        found = (version_number(name.rstrip("/")) for name in names if name.endswith("/"))
        return sorted(n for n in found if n is not None)

    def read(self, model_id: str, version: str) -> dict[str, Any] | None:
        blob = self.backend.read(f"{_versions_key(model_id)}{version}/{MANIFEST_FILE}")
        return load(blob.data, MANIFEST_FILE) if blob is not None else None

    def publish(
        self, model_id: str, doc: dict[str, Any], patch_file: Path | None
    ) -> dict[str, Any]:
        if patch_file is not None:
            doc["patch"] = self._upload_patch(model_id, Path(patch_file), doc["patch"])
        elif doc["patch"] is not None:
            raise InvalidDocument("manifest describes a patch but no patch file was given")
        numbers = self.numbers(model_id)
        number = numbers[-1] + 1 if numbers else 0
        for _ in range(MAX_PUBLISH_ATTEMPTS):
            doc["id"] = f"v{number}"
            key = f"{_versions_key(model_id)}{doc['id']}/{MANIFEST_FILE}"
            if self.backend.put_if_absent(key, dump(doc)):
                if patch_file is not None:  # this machine has it: no download later
                    with contextlib.suppress(OSError):
                        self._cache(Path(patch_file), self._cached(model_id, doc["id"]))
                return doc
            number += 1
        raise Conflict(f"no free version number for model {model_id}")

    def _upload_patch(
        self, model_id: str, patch_file: Path, described: dict[str, Any] | None
    ) -> dict[str, Any]:
        if not patch_file.is_file():
            raise InvalidDocument(f"patch file {patch_file.name} does not exist")
        size, sha256 = _size_and_sha256(patch_file)
        described = dict(described or {})
        if described.get("sha256") not in (None, sha256):
            raise InvalidDocument("patch sha256 in the manifest does not match the patch file")
        key = self.patch_key(model_id, sha256)
        if not self.backend.exists(key):  # content-addressed: the same bytes once
            self.backend.upload_file(patch_file, key)
        return {**described, "bytes": size, "sha256": sha256,
                "layers": described.get("layers", [])}

    def _cached(self, model_id: str, version: str) -> Path:
        return self.cache_root / "models" / model_id / "versions" / version / PATCH_FILE

    @staticmethod
    def _cache(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{dst.name}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)

    def patch_path(self, model_id: str, version: str, manifest: dict[str, Any]) -> Path:
        patch = manifest["patch"]
        path = self._cached(model_id, version)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == patch["bytes"]:
                return path
        tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            self.backend.download_file(self.patch_key(model_id, patch["sha256"]), tmp)
        except FileNotFoundError:
            raise StoreError(f"the patch of {model_id}/{version} is missing from the "
                             "object store") from None
        try:
            if _size_and_sha256(tmp)[1] != patch["sha256"]:
                raise StoreError(f"the patch of {model_id}/{version} does not match its "
                                 "manifest's sha256")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path


def _size_and_sha256(path: Path, chunk: int = 1 << 20) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


