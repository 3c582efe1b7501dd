"""Compacted patches: a version rewritten as one patch from v0, and how a version is
materialised once some of its chain may be compacted or deleted.

A compacted patch of version V gives exactly V's weights when applied to v0 (it is the
chain's patches merged: each layer's newest weight, the edit keys of every step in
order, the newest preservation factor). It is stored beside the immutable versions,
content-addressed, as `models/{model_id}/compacted/{V}.{sha256}.safetensors`, and named
by the model's lifecycle document (store.lifecycle), so V's manifest never changes.

`materialise_plan` says what a worker applies to v0 to build V: the compacted patch of
the newest compacted version in V's chain (if any), then the own patches of the
versions after it. A version whose files were deleted cannot be part of that plan.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from store.backends.local import LocalBackend
from store.errors import NotFound, StoreError
from store.files import TMP_PREFIX
from store.lifecycle import version_entry
from store.sealing import chain_of, parents_of
from store.versions import size_and_sha256

if TYPE_CHECKING:
    from store.artifacts import ArtifactStore


class VersionGone(NotFound):
    """A version whose patch files were deleted (DELETE on the version): its manifest
    still resolves, but it cannot be materialised."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="version")


class Plan(NamedTuple):
    compacted: str | None  # the version whose compacted patch is applied first
    patches: list[str]  # then the own patches of these versions, in order


def compacted_key(model_id: str, version: str, sha256: str) -> str:
    return f"models/{model_id}/compacted/{version}.{sha256}.safetensors"


def plan_for(chain: list[str], lifecycle: dict[str, Any]) -> Plan:
    """What to apply to v0 to build chain[-1] (chain: v0 .. version)."""
    for i in range(len(chain) - 1, 0, -1):
        if version_entry(lifecycle, chain[i])["compacted"]:
            return Plan(chain[i], chain[i + 1:])
    return Plan(None, chain[1:])


def materialise_plan(store: ArtifactStore, model_id: str, version: str) -> Plan:
    """The plan for `version`; VersionGone when it needs a deleted version's files."""
    chain = store.lineage(model_id, version)
    lifecycle = store.lifecycle.read(model_id)
    plan = plan_for(chain, lifecycle)
    needed = ([plan.compacted] if plan.compacted else []) + plan.patches
    if version_entry(lifecycle, version)["deleted"]:
        needed.append(version)
    for name in needed:
        if version_entry(lifecycle, name)["deleted"]:
            raise VersionGone(f"version {name} of model {model_id} was deleted; "
                              f"{version} cannot be built without it")
    return plan


def needed_by(store: ArtifactStore, model_id: str, version: str) -> list[str]:
    """The live (not deleted) versions other than `version` whose materialisation uses
    `version`'s files (its own patch or its compacted patch)."""
    manifests = store.list_versions(model_id)
    parents = parents_of(manifests)
    lifecycle = store.lifecycle.read(model_id)
    users = []
    for other in parents:
        if other == version or version_entry(lifecycle, other)["deleted"]:
            continue
        chain = chain_of(parents, other)
        if version not in chain:
            continue
        plan = plan_for(chain, lifecycle)
        if version == plan.compacted or version in plan.patches:
            users.append(other)
    return users


def store_compacted(
    store: ArtifactStore, model_id: str, version: str, patch_file: Path
) -> dict[str, Any]:
    """Upload a compacted patch; returns its {"bytes", "sha256", "key"}."""
    size, sha256 = size_and_sha256(patch_file)
    key = compacted_key(model_id, version, sha256)
    if not store.backend.exists(key):
        store.backend.upload_file(patch_file, key)
    return {"bytes": size, "sha256": sha256, "key": key}


def compacted_path(store: ArtifactStore, model_id: str, version: str) -> Path:
    """Local path of the version's compacted patch (downloaded once from an object
    store, checked against its sha256); NotFound when it has none."""
    info = version_entry(store.lifecycle.read(model_id), version)["compacted"]
    if not info:
        raise NotFound(f"version {version} of model {model_id} is not compacted",
                       kind="patch")
    key = compacted_key(model_id, version, info["patch"]["sha256"])
    if isinstance(store.backend, LocalBackend):
        return store.backend.path(key)
    path = store.root / key
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        store.backend.download_file(key, tmp)
        if size_and_sha256(tmp)[1] != info["patch"]["sha256"]:
            raise StoreError(f"the compacted patch of {model_id}/{version} does not match "
                             "its sha256")
        os.replace(tmp, path)
    except FileNotFoundError:
        raise StoreError(f"the compacted patch of {model_id}/{version} is missing") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def delete_compacted(store: ArtifactStore, model_id: str, version: str) -> list[str]:
    """Remove every compacted patch of a version (objects and local copies)."""
    prefix = f"models/{model_id}/compacted/"
    removed = [k for k in store.backend.list_keys(prefix)
               if k[len(prefix):].startswith(f"{version}.")]
    for key in removed:
        store.backend.delete(key)
    local = store.root / "models" / model_id / "compacted"
    if store.shared and local.is_dir():
        for path in local.glob(f"{version}.*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return removed

