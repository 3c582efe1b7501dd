"""The worker's own settings (on top of ServiceSettings).

The statistics sample count is part of the statistics cache key: changing it makes the
next prepare or forget job compute new statistics (old files stay in `stats/`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from store.settings.service import ServiceSettings
from store.settings.source import SettingsError, variable_given

INTERACTIVE_SUFFIX = "-interactive"
"""The interactive queue: the edits queue's name and this suffix (app.queue's)."""
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
REDIS_MISSING = (
    "REDIS_URL is not set: point it at the Redis that the API uses "
    "(e.g. redis://localhost:6379/0), or run `python -m app.local_stack`, "
    "which starts an embedded server, a worker and the API together")


class WorkerSettings(ServiceSettings):
    """Everything a worker (`python -m worker`) can be told from outside."""

    readers = "worker"

    device: str = Field("cpu", description='torch device: "cpu", "cuda" or "cuda:N"')
    torch_threads: int = Field(1, ge=1, description="torch.set_num_threads")
    # 20k keeps a CPU prepare of SmolLM2 to minutes; the engine's reference is 100000
    stats_samples: int = Field(20_000, ge=1, description=(
        "tokens sampled for each edit layer's second-moment statistics (raise on a GPU)"))
    model_cache_size: int = Field(2, ge=1, description=(
        "materialised versions kept resident (LRU); 2 holds a version and its parent"))
    # None: worker.context picks the budget for the device
    model_cache_mb: int | None = Field(None, ge=1, description=(
        "memory budget of resident versions in MiB; unset: half the RAM (cpu), 80% of "
        "the GPU's memory (cuda)"))
    coalesce_window_s: float = Field(2.0, ge=0, le=600, allow_inf_nan=False, description=(
        "seconds a forget job waits after submission for others to join its edit (0: none)"))
    coalesce_max_batch: int = Field(64, ge=1, description=(
        "most records one coalesced edit takes (1: no coalescing)"))
    edit_history: bool = Field(False, description=(
        "resident versions keep their chain's forget keys (needed for history_weight > 0)"))
    worker_queues: Literal["all", "interactive", "edits"] = Field("all", description=(
        "all: the interactive queue first, then the edits queue; interactive or edits: "
        "only that one"))

    @field_validator("device", "worker_queues", mode="before")
    @classmethod
    def _device_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE_RE.match(value):
            raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_a_directory(cls, value: Path) -> Path:
        # the worker's rule only: the API starts on such a store and answers /readyz 503
        if value.exists() and not value.is_dir():
            raise ValueError("exists and is not a directory")
        return value

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, require_redis: bool = True
    ) -> WorkerSettings:
        """The settings from `environ` (default os.environ); SettingsError listing every
        bad value, and REDIS_URL's absence when `require_redis`."""
        missing = require_redis and not variable_given(environ, "REDIS_URL")
        try:
            settings = cls.load(environ)
        except SettingsError as exc:
            raise SettingsError(*((REDIS_MISSING,) if missing else ()), *exc.problems) from None
        if missing:
            raise SettingsError(REDIS_MISSING)
        return settings

    @property
    def coalescing(self) -> bool:
        """Whether forget jobs may be merged (a batch of 1 record never merges)."""
        return self.coalesce_max_batch > 1

    @property
    def listen_queues(self) -> list[str]:
        """The queues this worker takes jobs from, in the order it looks at them."""
        interactive = self.queue_name + INTERACTIVE_SUFFIX
        return {"all": [interactive, self.queue_name], "interactive": [interactive],
                "edits": [self.queue_name]}[self.worker_queues]
