"""Job "compact": rewrite a version as one patch from v0.

A patch holds the full new weight of each layer it edits (zerounlearn.patch), so a
chain v1..vN applied in order equals one merged patch: for each layer the newest
weight, the edit keys of every step concatenated in order (what apply_patch collects),
and the newest preservation factor (what apply_patch keeps). Applied to v0 the merged
patch gives exactly the version's weights; later edits see the same edit keys and carry.

The merged patch is stored beside the versions (store.compaction) and named in the
model's lifecycle document; the version's manifest is unchanged. From then on a worker
builds the version (and its descendants) from v0 plus that patch, so the versions
between v0 and it can be deleted (DELETE on them).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from store import ArtifactStore
from store.compaction import (
    VersionGone,
    compacted_path,
    materialise_plan,
    needed_by,
    store_compacted,
)
from store.enums import JobKind
from store.lifecycle import version_entry
from worker.context import get_context
from worker.jobs import JobRun, run_job
from worker.model_cache import check_patch_file
from worker.version_guard import VersionDeleted, check_job_version
from zerounlearn import Patch, load_patch, save_patch
from zerounlearn.errors import PatchMismatch

logger = logging.getLogger(__name__)

COMPACTED = "version.compacted"
"""Audit action: a version was rewritten as one patch from v0."""
COMPACTED_METHOD = "compacted"


def merge_patches(patches: list[Patch], replaces: list[str]) -> Patch:
    """One patch equal to applying `patches` in order (see the module docstring)."""
    import torch

    if not patches:
        raise PatchMismatch("nothing to compact: the chain holds no patch")
    fingerprints = {p.base_fingerprint for p in patches if p.base_fingerprint}
    if len(fingerprints) > 1:
        raise PatchMismatch("the chain's patches were computed for different base models")
    weights: dict[int, torch.Tensor] = {}
    keys: dict[int, torch.Tensor] = {}
    carry: dict[int, torch.Tensor] = {}
    for patch in patches:
        weights.update(patch.weights)  # the newest weight of a layer wins
        carry.update(patch.carry)  # apply_patch replaces the carry
        for layer, k in patch.keys.items():  # apply_patch appends the keys
            k = k.detach().to("cpu", torch.float32)
            keys[layer] = k if layer not in keys else torch.cat([keys[layer], k], dim=1)
    methods = [p.method for p in patches]
    return Patch(
        method=COMPACTED_METHOD,
        hparams={},
        base_fingerprint=next(iter(fingerprints), ""),
        weights=weights,
        metadata={"compacted": {"replaces": list(replaces), "methods": methods}},
        keys=keys,
        carry=carry,
    )


def chain_patches(store: ArtifactStore, model_id: str, version: str) -> list[Patch]:
    """The patches that build `version` from v0, in order (a compacted ancestor's
    merged patch first when there is one), each checked against its sha256."""
    try:
        plan = materialise_plan(store, model_id, version)
    except VersionGone as exc:
        raise VersionDeleted(str(exc)) from None
    patches = []
    if plan.compacted is not None:
        info = version_entry(store.lifecycle.read(model_id), plan.compacted)["compacted"]
        path = compacted_path(store, model_id, plan.compacted)
        check_patch_file(path, info["patch"], f"{model_id}/{plan.compacted} (compacted)")
        patches.append(load_patch(path))
    for step in plan.patches:
        manifest = store.get_version(model_id, step)
        if manifest.get("patch") is None:
            continue
        path = store.patch_path(model_id, step)
        check_patch_file(path, manifest["patch"], f"{model_id}/{step}")
        patches.append(load_patch(path))
    return patches


def compact(job_id: str, model_id: str, version: str) -> dict[str, Any]:
    """Write `version` as one patch from v0 and record it; the result names the versions
    that can now be deleted."""
    ctx = get_context()
    store = ctx.store

    def body(run: JobRun) -> dict[str, Any]:
        check_job_version(store, run.job, model_id, version)
        chain = store.lineage(model_id, version)
        run.progress("load", 0.0)
        merged = merge_patches(chain_patches(store, model_id, version), chain[1:])
        run.progress("write", 0.6)
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".tmp-compact-", dir=store.root) as tmp:
            patch_file = Path(tmp) / "patch.safetensors"
            info = save_patch(merged, patch_file)
            stored = store_compacted(store, model_id, version, patch_file)
        patch = {"bytes": stored["bytes"], "sha256": stored["sha256"],
                 "layers": info["layers"], "key": stored["key"]}
        store.lifecycle.set_compacted(model_id, version, {"patch": patch, "job_id": job_id,
                                                          "replaces": chain[1:]})
        active = store.get_model(model_id)["active_version"]
        deletable = [v for v in chain[1:-1] if v != active
                     and not version_entry(store.lifecycle.read(model_id), v)["deleted"]
                     and not needed_by(store, model_id, v)]
        store.audit.append(f"worker:{ctx.name or 'unnamed'}", COMPACTED,
                           ids={"model": model_id, "version": version, "job": job_id},
                           detail={"patch_sha256": patch["sha256"], "replaces": chain[1:]})
        logger.info("model %s: version %s compacted (%d patch(es) -> 1)", model_id, version,
                    len(chain) - 1)
        return {"version": version, "patch": patch, "replaces": chain[1:],
                "deletable": deletable}

    return run_job(store, job_id, JobKind.COMPACT, body, worker_name=ctx.name)
