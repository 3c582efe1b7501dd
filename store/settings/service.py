"""The settings the API and the worker share: store, database, Redis, queue, logs, gate.

Each group is a class of its own, so a part that needs one group reads only it (the
store reads DatabaseSettings; `python -m store.bucket_init` BlobSettings); the API's and
the worker's classes inherit ServiceSettings, so both validate these variables here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from store.settings.source import ENV_PREFIX, EnvSettings, SecretText

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://")
STORE_SCHEMES = ("s3://", "file://")
DEVICE_CLASS_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
QUEUE_PREFIX = "zerounlearn-"
"""Queue names are QUEUE_PREFIX + device class, e.g. "zerounlearn-cpu"."""

GATE_FIELDS = ("max_perplexity_increase", "max_efficacy", "max_neighbor_drop", "max_guard_drop")
"""The quality gate's limits: `gate_<name>` (default) and `gate_limit_<name>` (loosest)."""


class DatabaseSettings(EnvSettings):
    """The metadata database."""

    readers = "API, worker, admin tools"

    # Several machines (an S3 store) need one shared database; each machine would
    # otherwise keep its own metadata (a warning is logged at start-up).
    database_url: SecretText | None = Field(None, description=(
        "metadata database: unset = SQLite in the data directory (one machine); "
        "postgresql+psycopg://user:password@host/db for several. Never logged"))

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: SecretText | None) -> SecretText | None:
        if value is None or not value.strip():
            return None  # compose's `${VAR:-}` gives an empty one: unset
        if not value.strip().startswith(DATABASE_SCHEMES):
            raise ValueError("must be sqlite:///path or "
                             "postgresql+psycopg://user:password@host/database")
        return SecretText(value.strip())


class BlobSettings(EnvSettings):
    """Where blobs (patches, statistics, exports) live."""

    readers = "API, worker"

    data_dir: Path = Field(Path("data"), description=(
        "store root (models, versions, jobs); with an S3 store this machine's cache"))
    store_url: str | None = Field(None, description=(
        "unset: the data directory is the store; s3://bucket/prefix: an S3-compatible "
        "store every machine shares"))
    s3_endpoint_url: str | None = Field(None, description=(
        "the S3 API of MinIO, SeaweedFS, moto... (unset: AWS)"))

    @field_validator("data_dir")
    @classmethod
    def _directory(cls, value: Path) -> Path:
        if not str(value).strip():
            raise ValueError("must be a directory path")
        return value.expanduser().resolve()

    @field_validator("store_url", "s3_endpoint_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith(STORE_SCHEMES)
                                  or value.partition("://")[2] == ""):
            raise ValueError("must be s3://bucket[/prefix] or file:///path")
        return value


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LoggingSettings(EnvSettings):
    """How the processes log (store.logs)."""

    readers = "API, worker"

    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    log_format: Literal["text", "json"] = Field("text", description=(
        "text: one classic line per record; json: one JSON object per line, with ids"))

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_any_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def logging_level(self) -> int:
        """log_level as the logging module's number."""
        return int(logging.getLevelName(self.log_level))


class ServiceSettings(DatabaseSettings, BlobSettings, LoggingSettings):
    """What the API and the worker share, and validate, in one place."""

    readers = "API, worker"

    # "" (unset): `python -m app` and `python -m app.local_stack` start an embedded server
    redis_url: SecretText = Field(SecretText(""), validation_alias="REDIS_URL", description=(
        "the Redis both use (RQ queues, results); unset: the API starts an embedded "
        "server, a worker refuses to start"))
    device_class: str = Field("cpu", description=(
        "jobs go to the queues zerounlearn-{class} and zerounlearn-{class}-interactive "
        "(cpu, gpu, a100...)"))

    # --- quality gate of forget edits (README "Quality gate"): the defaults a request
    # may tighten, and the loosest values an admin's request may ask for.
    gate_max_perplexity_increase: float = Field(25.0, ge=0, le=1e6, allow_inf_nan=False,
                                                description="% over the parent's perplexity")
    gate_max_efficacy: float = Field(50.0, ge=0, le=100, allow_inf_nan=False,
                                     description="% of the request's records still reproduced")
    gate_max_neighbor_drop: float = Field(50.0, ge=0, le=100, allow_inf_nan=False,
                                          description="points of neighbour specificity lost")
    gate_max_guard_drop: float = Field(25.0, ge=0, le=100, allow_inf_nan=False,
                                       description="points of the model's guard facts lost")
    gate_limit_max_perplexity_increase: float = Field(
        100.0, ge=0, le=1e6, allow_inf_nan=False, description="loosest perplexity gate")
    gate_limit_max_efficacy: float = Field(100.0, ge=0, le=100, allow_inf_nan=False,
                                           description="loosest efficacy gate")
    gate_limit_max_neighbor_drop: float = Field(100.0, ge=0, le=100, allow_inf_nan=False,
                                                description="loosest neighbour gate")
    gate_limit_max_guard_drop: float = Field(50.0, ge=0, le=100, allow_inf_nan=False,
                                             description="loosest guard-fact gate")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretText) -> SecretText:
        if value.strip() and not value.strip().startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)}")
        return SecretText(value.strip())

    @field_validator("device_class", mode="before")
    @classmethod
    def _device_class(cls, value: Any) -> Any:
        if isinstance(value, str) and not DEVICE_CLASS_RE.match(value.strip()):
            raise ValueError("must be lower-case letters, digits, '-' or '_' (e.g. cpu, gpu)")
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _gate_within_limits(self) -> ServiceSettings:
        for name in GATE_FIELDS:
            if getattr(self, f"gate_{name}") > getattr(self, f"gate_limit_{name}"):
                raise ValueError(f"{ENV_PREFIX}GATE_{name.upper()} is above its limit "
                                 f"{ENV_PREFIX}GATE_LIMIT_{name.upper()}")
        return self

    @property
    def gate_defaults(self) -> dict[str, float]:
        """The quality gate a forget request gets unless it says otherwise."""
        return {name: float(getattr(self, f"gate_{name}")) for name in GATE_FIELDS}

    @property
    def gate(self) -> dict[str, float]:
        """gate_defaults under the worker's name for it."""
        return self.gate_defaults

    @property
    def gate_limits(self) -> dict[str, float]:
        """The loosest values an admin may ask for."""
        return {name: float(getattr(self, f"gate_limit_{name}")) for name in GATE_FIELDS}

    @property
    def queue_name(self) -> str:
        """The RQ queue of edits of this device class (app.queue adds the interactive one)."""
        return f"{QUEUE_PREFIX}{self.device_class}"


def _gate_field_defaults(prefix: str) -> dict[str, float]:
    return {name: float(ServiceSettings.model_fields[prefix + name].default)
            for name in GATE_FIELDS}


GATE_DEFAULTS = _gate_field_defaults("gate_")
"""The quality gate a forget edit must meet unless its request tightens or loosens it."""
GATE_LIMITS = _gate_field_defaults("gate_limit_")
"""The loosest gate a request (an admin's) may ask for."""
