"""Worker settings: read once from the environment, validated with one clear message each.

variable                      default   meaning
REDIS_URL                     required  the RQ broker; `python -m app.local_stack` passes its
                                        embedded server's URL
ZEROUNLEARN_DATA_DIR          ./data    artifact store root (models, versions, jobs)
ZEROUNLEARN_DEVICE_CLASS      cpu       the worker serves the queue `zerounlearn-{class}`
ZEROUNLEARN_DEVICE            cpu       torch device: "cpu", "cuda" or "cuda:N"
ZEROUNLEARN_TORCH_THREADS     1         torch.set_num_threads
ZEROUNLEARN_STATS_SAMPLES     20000     tokens sampled for the second-moment statistics of
                                        each edit layer; 20k keeps a CPU prepare job of
                                        SmolLM2 to minutes; raise it (e.g. 100000, the
                                        engine's reference) on a GPU for better statistics
ZEROUNLEARN_MODEL_CACHE_SIZE  2         materialised versions kept resident (LRU); 2 holds
                                        a version and its parent for verify
ZEROUNLEARN_LOG_LEVEL         INFO      DEBUG, INFO, WARNING, ERROR or CRITICAL

The statistics sample count is part of the statistics cache key: changing it makes the
next prepare/forget job compute new statistics (old files stay in `stats/`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = "./data"
"""Store root when ZEROUNLEARN_DATA_DIR is unset (the same default as the API)."""

DEFAULT_DEVICE_CLASS = "cpu"
"""Queue suffix when ZEROUNLEARN_DEVICE_CLASS is unset."""

DEFAULT_STATS_SAMPLES = 20_000
"""Tokens per statistics pass: enough for a well-conditioned C on CPU in minutes."""

DEFAULT_MODEL_CACHE_SIZE = 2
"""Resident materialised versions: a version and its parent (verify) fit."""

QUEUE_PREFIX = "zerounlearn-"
"""Queue names are QUEUE_PREFIX + device class, e.g. "zerounlearn-cpu"."""

_DEVICE_CLASS_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # as the API's
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """An environment variable has a bad value; the message names it and says why."""


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str
    data_dir: Path
    device_class: str = DEFAULT_DEVICE_CLASS
    device: str = "cpu"
    torch_threads: int = 1
    stats_samples: int = DEFAULT_STATS_SAMPLES
    model_cache_size: int = DEFAULT_MODEL_CACHE_SIZE
    log_level: str = "INFO"

    @property
    def queue_name(self) -> str:
        return f"{QUEUE_PREFIX}{self.device_class}"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, require_redis: bool = True
    ) -> WorkerSettings:
        """Read and validate every setting; raise SettingsError listing all bad values."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        redis_url = env.get("REDIS_URL", "").strip()
        if not redis_url and require_redis:
            problems.append(
                "REDIS_URL is not set: point it at the Redis that the API uses "
                "(e.g. redis://localhost:6379/0), or run `python -m app.local_stack`, "
                "which starts an embedded server, a worker and the API together"
            )
        elif redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            problems.append("REDIS_URL must start with redis://, rediss:// or unix://")

        data_dir = Path(env.get("ZEROUNLEARN_DATA_DIR", "").strip() or DEFAULT_DATA_DIR)
        if data_dir.exists() and not data_dir.is_dir():
            problems.append(f"ZEROUNLEARN_DATA_DIR={data_dir} exists and is not a directory")

        device_class = env.get("ZEROUNLEARN_DEVICE_CLASS", "").strip() or DEFAULT_DEVICE_CLASS
        if not _DEVICE_CLASS_RE.match(device_class):
            problems.append(
                "ZEROUNLEARN_DEVICE_CLASS must be lower-case letters, digits, '-' or '_'"
                f" such as cpu or gpu (got {device_class!r})"
            )

        device = env.get("ZEROUNLEARN_DEVICE", "").strip().lower() or "cpu"
        if not _DEVICE_RE.match(device):
            problems.append(
                f"ZEROUNLEARN_DEVICE must be 'cpu', 'cuda' or 'cuda:N' (got {device!r})"
            )

        threads = _positive_int(env, "ZEROUNLEARN_TORCH_THREADS", 1, problems)
        samples = _positive_int(env, "ZEROUNLEARN_STATS_SAMPLES", DEFAULT_STATS_SAMPLES, problems)
        cache_size = _positive_int(
            env, "ZEROUNLEARN_MODEL_CACHE_SIZE", DEFAULT_MODEL_CACHE_SIZE, problems
        )

        log_level = env.get("ZEROUNLEARN_LOG_LEVEL", "").strip().upper() or "INFO"
        if log_level not in _LOG_LEVELS:
            problems.append(f"ZEROUNLEARN_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}")

        if problems:
            raise SettingsError("invalid worker settings:\n  - " + "\n  - ".join(problems))
        return cls(
            redis_url=redis_url,
            data_dir=data_dir.resolve(),
            device_class=device_class,
            device=device,
            torch_threads=threads,
            stats_samples=samples,
            model_cache_size=cache_size,
            log_level=log_level,
        )

    @property
    def logging_level(self) -> int:
        return int(logging.getLevelName(self.log_level))


def _positive_int(env: Mapping[str, str], name: str, default: int, problems: list[str]) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name} must be a positive integer (got {raw!r})")
        return default
    if value < 1:
        problems.append(f"{name} must be a positive integer (got {value})")
        return default
    return value
