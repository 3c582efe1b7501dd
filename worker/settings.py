"""Worker settings: read once from the environment, validated with one clear message each.

variable                      default   meaning
REDIS_URL                     required  the RQ broker; `python -m app.local_stack` passes its
                                        embedded server's URL
ZEROUNLEARN_DATA_DIR          ./data    artifact store root (models, versions, jobs)
ZEROUNLEARN_DEVICE_CLASS      cpu       the worker serves the queues `zerounlearn-{class}`
                                        (edits, long jobs) and
                                        `zerounlearn-{class}-interactive` (generate, export,
                                        verify of one record)
ZEROUNLEARN_WORKER_QUEUES     all       all: the interactive queue first, then the edits
                                        queue; interactive: only the interactive queue (a
                                        worker that answers while others edit); edits: only
                                        the edits queue
ZEROUNLEARN_DEVICE            cpu       torch device: "cpu", "cuda" or "cuda:N"
ZEROUNLEARN_TORCH_THREADS     1         torch.set_num_threads
ZEROUNLEARN_STATS_SAMPLES     20000     tokens sampled for the second-moment statistics of
                                        each edit layer; 20k keeps a CPU prepare job of
                                        SmolLM2 to minutes; raise it (e.g. 100000, the
                                        engine's reference) on a GPU for better statistics
ZEROUNLEARN_MODEL_CACHE_SIZE  2         materialised versions kept resident (LRU); 2 holds
                                        a version and its parent for verify
ZEROUNLEARN_MODEL_CACHE_MB    (auto)    memory budget of resident versions in MiB (LRU
                                        eviction beyond it); auto: half the machine's RAM
                                        on cpu, 80% of the GPU's memory on cuda
ZEROUNLEARN_LOG_LEVEL         INFO      DEBUG, INFO, WARNING, ERROR or CRITICAL
ZEROUNLEARN_COALESCE_WINDOW_S 2.0       seconds a forget job waits after it was submitted
                                        so that later requests for the same model, base,
                                        method and hparams join its edit (0: no wait)
ZEROUNLEARN_COALESCE_MAX_BATCH 64       most records one coalesced edit takes (the first
                                        job always runs whole); 1 disables coalescing
ZEROUNLEARN_EDIT_HISTORY      0         1: resident versions keep their chain's forget keys
                                        (2 x d_ff floats per record and edited layer), so
                                        forget jobs may use hparams history_weight > 0
ZEROUNLEARN_GATE_<NAME>       see below the quality gate of forget edits (worker/gate.py):
ZEROUNLEARN_GATE_LIMIT_<NAME>           defaults, and the loosest values a request may ask
                                        for; NAME: MAX_PERPLEXITY_INCREASE (25 / 100 %),
                                        MAX_EFFICACY (50 / 100 %), MAX_NEIGHBOR_DROP
                                        (50 / 100 points), MAX_GUARD_DROP (25 / 50 points).
                                        Set the API's to the same values.

The statistics sample count is part of the statistics cache key: changing it makes the
next prepare/forget job compute new statistics (old files stay in `stats/`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = "./data"
"""Store root when ZEROUNLEARN_DATA_DIR is unset (the same default as the API)."""

DEFAULT_DEVICE_CLASS = "cpu"
"""Queue suffix when ZEROUNLEARN_DEVICE_CLASS is unset."""

DEFAULT_STATS_SAMPLES = 20_000
"""Tokens per statistics pass: enough for a well-conditioned C on CPU in minutes."""

DEFAULT_MODEL_CACHE_SIZE = 2
"""Resident materialised versions: a version and its parent (verify) fit."""

DEFAULT_COALESCE_WINDOW_S = 2.0
"""How long a forget job waits for others to join its edit, counted from its submission."""

DEFAULT_COALESCE_MAX_BATCH = 64
"""Most records of one coalesced edit."""

MAX_COALESCE_WINDOW_S = 600.0
"""A longer wait would hold a worker idle for nothing: refused as a likely typo."""

GATE_DEFAULTS: dict[str, float] = {
    "max_perplexity_increase": 25.0,  # % over the parent on the reference texts
    "max_efficacy": 50.0,  # % of the request's records still reproduced
    "max_neighbor_drop": 50.0,  # points of the request's neighbours' specificity
    "max_guard_drop": 25.0,  # points of the model's guard facts (worker.gate.guard_facts)
}
"""The quality gate a forget edit must meet unless its request tightens or loosens it."""

GATE_LIMITS: dict[str, float] = {
    "max_perplexity_increase": 100.0, "max_efficacy": 100.0,
    "max_neighbor_drop": 100.0, "max_guard_drop": 50.0,
}
"""The loosest gate a request (an admin's) may ask for."""

GATE_CEILINGS: dict[str, float] = {
    "max_perplexity_increase": 1e6, "max_efficacy": 100.0,
    "max_neighbor_drop": 100.0, "max_guard_drop": 100.0,
}
"""What a gate setting can be at all (percentages and points stop at 100)."""

QUEUE_PREFIX = "zerounlearn-"
"""Queue names are QUEUE_PREFIX + device class, e.g. "zerounlearn-cpu"."""

INTERACTIVE_SUFFIX = "-interactive"
"""The interactive queue: the edits queue's name and this suffix (app.queue's)."""

WORKER_QUEUES = ("all", "interactive", "edits")
"""ZEROUNLEARN_WORKER_QUEUES values."""

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
    model_cache_mb: int | None = None  # None: worker.context picks a budget for the device
    log_level: str = "INFO"
    coalesce_window_s: float = DEFAULT_COALESCE_WINDOW_S
    coalesce_max_batch: int = DEFAULT_COALESCE_MAX_BATCH
    edit_history: bool = False  # ZEROUNLEARN_EDIT_HISTORY: resident models track edit keys
    # ZEROUNLEARN_STORE_URL: None = data_dir is the store; s3://bucket/prefix = shared
    # object store (data_dir is then this machine's cache); see store.backends.
    store_url: str | None = None
    s3_endpoint_url: str | None = None  # ZEROUNLEARN_S3_ENDPOINT_URL (MinIO, moto...)
    # ZEROUNLEARN_DATABASE_URL: the metadata database, the API's (unset: SQLite in
    # data_dir; several machines need one shared PostgreSQL URL: see app.settings).
    database_url: str | None = field(default=None, repr=False)  # may hold a password
    # quality gate of forget edits: defaults and the loosest values a request may ask for
    gate: Mapping[str, float] = field(default_factory=lambda: dict(GATE_DEFAULTS))
    gate_limits: Mapping[str, float] = field(default_factory=lambda: dict(GATE_LIMITS))
    worker_queues: str = "all"  # ZEROUNLEARN_WORKER_QUEUES: which queues (WORKER_QUEUES)

    @property
    def coalescing(self) -> bool:
        """Whether forget jobs may be merged (a batch of 1 record never merges)."""
        return self.coalesce_max_batch > 1

    @property
    def queue_name(self) -> str:
        return f"{QUEUE_PREFIX}{self.device_class}"

    @property
    def listen_queues(self) -> list[str]:
        """The queues this worker takes jobs from, in the order it looks at them."""
        interactive = self.queue_name + INTERACTIVE_SUFFIX
        return {"all": [interactive, self.queue_name], "interactive": [interactive],
                "edits": [self.queue_name]}[self.worker_queues]

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
        cache_mb = None
        if env.get("ZEROUNLEARN_MODEL_CACHE_MB", "").strip():
            cache_mb = _positive_int(env, "ZEROUNLEARN_MODEL_CACHE_MB", 1, problems)

        window = _seconds(
            env, "ZEROUNLEARN_COALESCE_WINDOW_S", DEFAULT_COALESCE_WINDOW_S,
            MAX_COALESCE_WINDOW_S, problems,
        )
        max_batch = _positive_int(
            env, "ZEROUNLEARN_COALESCE_MAX_BATCH", DEFAULT_COALESCE_MAX_BATCH, problems
        )

        history = env.get("ZEROUNLEARN_EDIT_HISTORY", "").strip().lower() or "0"
        if history not in ("0", "1", "true", "false"):
            problems.append("ZEROUNLEARN_EDIT_HISTORY must be 0 or 1")

        store_url = env.get("ZEROUNLEARN_STORE_URL", "").strip() or None
        if store_url and not store_url.startswith(("s3://", "file://")):
            problems.append("ZEROUNLEARN_STORE_URL must be s3://bucket[/prefix] or file:///path")
        s3_endpoint_url = env.get("ZEROUNLEARN_S3_ENDPOINT_URL", "").strip() or None
        database_url = env.get("ZEROUNLEARN_DATABASE_URL", "").strip() or None
        if database_url and not database_url.startswith(("sqlite://", "postgresql://",
                                                         "postgresql+psycopg://")):
            problems.append("ZEROUNLEARN_DATABASE_URL must be sqlite:///path or "
                            "postgresql+psycopg://user:password@host/database")

        gate, gate_limits = _gate(env, problems)

        worker_queues = env.get("ZEROUNLEARN_WORKER_QUEUES", "").strip().lower() or "all"
        if worker_queues not in WORKER_QUEUES:
            problems.append(f"ZEROUNLEARN_WORKER_QUEUES must be one of {', '.join(WORKER_QUEUES)}"
                            f" (got {worker_queues!r})")
            worker_queues = "all"

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
            model_cache_mb=cache_mb,
            log_level=log_level,
            coalesce_window_s=window,
            coalesce_max_batch=max_batch,
            edit_history=history in ("1", "true"),
            store_url=store_url,
            s3_endpoint_url=s3_endpoint_url,
            database_url=database_url,
            gate=gate,
            gate_limits=gate_limits,
            worker_queues=worker_queues,
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


def _seconds(
    env: Mapping[str, str], name: str, default: float, most: float, problems: list[str]
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{name} must be a number of seconds (got {raw!r})")
        return default
    if not math.isfinite(value) or not 0 <= value <= most:
        problems.append(f"{name} must be between 0 and {most:g} seconds (got {raw})")
        return default
    return value


def _gate(
    env: Mapping[str, str], problems: list[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """ZEROUNLEARN_GATE_<NAME> and ZEROUNLEARN_GATE_LIMIT_<NAME>; a default above its
    limit is refused."""
    gate, limits = dict(GATE_DEFAULTS), dict(GATE_LIMITS)
    for name, ceiling in GATE_CEILINGS.items():
        for values, prefix in ((gate, "ZEROUNLEARN_GATE_"), (limits, "ZEROUNLEARN_GATE_LIMIT_")):
            var = prefix + name.upper()
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or not 0 <= value <= ceiling:
                problems.append(f"{var} must be a number from 0 to {ceiling:g} (got {raw!r})")
            else:
                values[name] = value
        if gate[name] > limits[name]:
            problems.append(f"ZEROUNLEARN_GATE_{name.upper()} ({gate[name]:g}) is above "
                            f"ZEROUNLEARN_GATE_LIMIT_{name.upper()} ({limits[name]:g})")
    return gate, limits
