"""ModelCache: materialised model versions kept resident between jobs (LRU).

An entry is keyed by everything that identifies its weights: (model_id, version, dtype,
device). A miss loads the base model from its source (`zerounlearn.load_model`, which
converts a builtin or GGUF source once into the store's cache dir) and applies the
patches of the version's lineage v1..vN in order (with a compacted version in the
lineage: its one merged patch first, then the patches after it; store.compaction).
Each patch holds the full new down projection W of the layers it edited, so the result
is exact and repeatable.

Before a patch is applied its file is checked against the sha256 in its manifest, and
the base's fingerprint against the one recorded when the model was prepared: a base
directory edited after registration must not silently receive patches.

`get` hands out a shared model: callers must not modify it. `take` removes an entry so
the caller may edit it in place (the forget task applies its new patch to the parent's
weights) and `put` files it under its new version.

Eviction is least-recently-used under two limits: at most `max_entries` versions, and
(when `max_bytes` is set) at most `max_bytes` of parameters and buffers in total. The
newest entry always stays, even alone over the budget: a worker must be able to serve
the model it was asked for. Before loading a model the cache makes room for it using the
size of any version of it seen before (every version of a model has the same size).
"""

from __future__ import annotations

import gc
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from store import ArtifactStore
from store.compaction import VersionGone, compacted_path, materialise_plan
from worker.errors import BaseModelChanged, PatchIntegrityError
from worker.version_guard import VersionDeleted
from zerounlearn import LoadedModel, apply_patch, load_model, load_patch

logger = logging.getLogger(__name__)

Loader = Callable[..., LoadedModel]


class CacheKey(NamedTuple):
    model_id: str
    version: str
    dtype: str
    device: str


class ModelCache:
    """LRU of materialised versions; one instance per worker process (see worker.context)."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        device: str = "cpu",
        max_entries: int = 2,
        max_bytes: int | None = None,
        loader: Loader = load_model,
        track_edit_keys: bool = False,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive (or None for no byte budget)")
        self.store = store
        self.device = device
        self.track_edit_keys = track_edit_keys  # materialised versions keep edit keys
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._loader = loader
        self._entries: OrderedDict[CacheKey, LoadedModel] = OrderedDict()
        self._sizes: dict[str, int] = {}  # model_id -> bytes of one materialised version
        self.loads = 0  # base loads so far (tests and logs)
        self.evictions = 0

    # ---------------------------------------------------------------- public
    def key(self, model_id: str, version: str, dtype: str | None = None) -> CacheKey:
        if dtype is None:
            dtype = str(self.store.get_model(model_id).get("dtype") or "float32")
        return CacheKey(model_id, version, dtype, self.device)

    def get(self, model_id: str, version: str) -> LoadedModel:
        """The materialised version, shared: do NOT modify its weights."""
        key = self.key(model_id, version)
        lm = self._entries.get(key)
        if lm is not None:
            self._entries.move_to_end(key)
            logger.debug("model cache hit %s", key)
            return lm
        lm = self._materialise(key)
        self._insert(key, lm)
        return lm

    def take(self, model_id: str, version: str) -> LoadedModel:
        """The materialised version, removed from the cache: the caller owns it now."""
        key = self.key(model_id, version)
        lm = self._entries.pop(key, None)
        return lm if lm is not None else self._materialise(key)

    def put(self, model_id: str, version: str, lm: LoadedModel) -> None:
        """File a model whose weights are exactly `version` (e.g. after apply_patch)."""
        self._insert(self.key(model_id, version), lm)

    def discard(self, model_id: str | None = None) -> None:
        """Drop every entry (of one model when given)."""
        for key in [k for k in self._entries if model_id is None or k.model_id == model_id]:
            del self._entries[key]
        _release_memory(self.device)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[CacheKey]:
        return list(self._entries)

    @property
    def resident_bytes(self) -> int:
        """Parameters and buffers of every resident version, in bytes."""
        return sum(self._sizes.get(key.model_id, 0) for key in self._entries)

    # -------------------------------------------------------------- internals
    def _insert(self, key: CacheKey, lm: LoadedModel) -> None:
        self._sizes[key.model_id] = model_bytes(lm)
        self._entries[key] = lm
        self._entries.move_to_end(key)
        self._evict_until(lambda: self._over_budget(extra_entries=0, extra_bytes=0))

    def _over_budget(self, *, extra_entries: int, extra_bytes: int) -> bool:
        if len(self._entries) + extra_entries > self.max_entries:
            return True
        return self.max_bytes is not None and self.resident_bytes + extra_bytes > self.max_bytes

    def _evict_until(self, over: Callable[[], bool], *, keep_newest: bool = True) -> None:
        """Drop least-recently-used entries while `over()` holds (never the newest entry
        when keep_newest: it is the one just asked for)."""
        evicted = False
        while over() and len(self._entries) > (1 if keep_newest else 0):
            old, _ = self._entries.popitem(last=False)
            self.evictions += 1
            logger.info("model cache evicts %s/%s (%s, %s)", *old)
            evicted = True
        if evicted:
            _release_memory(self.device)

    def _materialise(self, key: CacheKey) -> LoadedModel:
        model = self.store.get_model(key.model_id)
        chain = self.store.lineage(key.model_id, key.version)  # v0 .. version
        # Make room first: a new model must not sit next to max_entries old ones, nor push
        # the resident bytes past the budget while it loads (size known once seen).
        expected_bytes = self._sizes.get(key.model_id, 0)
        self._evict_until(
            lambda: self._over_budget(extra_entries=1, extra_bytes=expected_bytes),
            keep_newest=False,
        )
        lm = self._loader(
            model["source"], dtype=key.dtype, device=key.device, cache_dir=self.store.cache_dir
        )
        self.loads += 1
        expected = model.get("fingerprint")
        if expected and expected != lm.fingerprint:
            raise BaseModelChanged(
                f"the base model of {key.model_id} changed since it was prepared "
                f"(fingerprint {lm.fingerprint[:12]}, expected {expected[:12]}); "
                "register it again as a new model"
            )
        if self.track_edit_keys:
            lm.track_edit_keys()  # before the chain: its patches' keys are collected
        self._apply_chain(key.model_id, key.version, lm)
        logger.info(
            "materialised %s/%s (%s on %s, %d patches)",
            key.model_id, key.version, key.dtype, key.device, len(chain) - 1,
        )
        return lm

    def _apply_chain(self, model_id: str, version: str, lm: LoadedModel) -> None:
        """v0 -> version: a compacted ancestor's (or its own) merged patch, then the
        patches after it (store.compaction); VersionDeleted when one was deleted."""
        try:
            plan = materialise_plan(self.store, model_id, version)
        except VersionGone as exc:
            raise VersionDeleted(str(exc)) from None
        if plan.compacted is not None:
            info = self.store.lifecycle.read(model_id)["versions"][plan.compacted]
            path = compacted_path(self.store, model_id, plan.compacted)
            check_patch_file(path, info["compacted"]["patch"],
                             f"{model_id}/{plan.compacted} (compacted)")
            apply_patch(lm, load_patch(path))
        for step in plan.patches:
            self._apply_version(model_id, step, lm)

    def _apply_version(self, model_id: str, version: str, lm: LoadedModel) -> None:
        manifest = self.store.get_version(model_id, version)
        if manifest.get("patch") is None:  # a version without changes (not written today)
            return
        path = self.store.patch_path(model_id, version)
        check_patch_file(path, manifest["patch"], f"{model_id}/{version}")
        apply_patch(lm, load_patch(path))


def model_bytes(lm: LoadedModel) -> int:
    """Bytes of the model's parameters and buffers (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in list(lm.model.parameters()) + list(lm.model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def check_patch_file(path: Path, described: dict[str, Any], label: str) -> None:
    """Raise PatchIntegrityError unless the file's sha256 matches its manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != described.get("sha256"):
        raise PatchIntegrityError(
            f"the patch of {label} does not match the sha256 in its manifest"
        )


def _release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
