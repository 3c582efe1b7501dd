"""The worker's per-process state: settings, the store, the resident model cache
and the resident method instances.

RQ calls the task functions by dotted path, so they cannot receive this state as an
argument. It lives in ONE per-process WorkerContext, created by `python -m worker` at
start-up (or lazily from the environment on first use, e.g. by a burst worker in a test)
and reached through `get_context()`. Nothing else in the worker package is global.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from store import ArtifactStore
from store.sql.startup import prepare_database
from worker.model_cache import ModelCache
from worker.settings import WorkerSettings
from zerounlearn.methods.registry import UnlearningMethod, get_method

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: WorkerSettings
    store: ArtifactStore
    models: ModelCache
    name: str | None = None  # the RQ worker's name, recorded in job documents
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # one instance per method name, kept so its caches (context templates sampled from
    # each model: seconds per request) are reused by later jobs
    methods: dict[str, UnlearningMethod] = field(default_factory=dict, repr=False)

    def method(self, name: str) -> UnlearningMethod:
        """The resident instance of method `name` (UnknownMethod if none is registered)."""
        if name not in self.methods:
            self.methods[name] = get_method(name)
        return self.methods[name]

    @classmethod
    def from_settings(cls, settings: WorkerSettings, name: str | None = None) -> WorkerContext:
        store = ArtifactStore.open(settings.data_dir, settings.store_url,
                                   s3_endpoint_url=settings.s3_endpoint_url,
                                   database_url=settings.database_url)
        prepare_database(store)  # migrate; refuse an old data directory not imported yet
        budget_mb = settings.model_cache_mb or default_cache_mb(settings.device)
        models = ModelCache(
            store, device=settings.device, max_entries=settings.model_cache_size,
            max_bytes=budget_mb << 20, track_edit_keys=settings.edit_history,
        )
        return cls(settings=settings, store=store, models=models, name=name)


def default_cache_mb(device: str) -> int:
    """Half the machine's RAM on cpu; 80% of the GPU's memory on cuda (MiB)."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return int(0.8 * torch.cuda.get_device_properties(index).total_memory) >> 20
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, ram // 2 >> 20)


class _Holder:
    """Holds the process's context; a class attribute rather than a bare module global."""

    context: WorkerContext | None = None
    guard = threading.Lock()


def set_context(context: WorkerContext | None) -> None:
    """Install (or with None, drop) this process's context."""
    with _Holder.guard:
        _Holder.context = context


def get_context() -> WorkerContext:
    """This process's context, created from the environment on first use."""
    with _Holder.guard:
        if _Holder.context is None:
            settings = WorkerSettings.from_env(require_redis=False)
            _Holder.context = WorkerContext.from_settings(settings)
            logger.info("worker context created from the environment (%s)", settings.data_dir)
        return _Holder.context
