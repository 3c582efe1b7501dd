"""API settings: environment variables, validated once at start-up.

Every setting is `ZEROUNLEARN_<NAME>` except REDIS_URL, which is read without the
prefix (the convention the worker and docker-compose share).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ZEROUNLEARN_"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
DEVICE_CLASS_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """The environment holds bad settings; the message has one line per bad value."""


class Settings(BaseSettings):
    """Everything the API can be told from outside; one instance per app (app.state)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, populate_by_name=True, extra="ignore", frozen=True
    )

    # None: not configured; `python -m app` then starts the embedded server.
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    # Root of the artifact store (models, versions, jobs); shared with the workers.
    data_dir: Path = Path("data")
    # Jobs go to the RQ queue "zerounlearn-{device_class}" ("cpu", "gpu", "a100"...).
    device_class: str = "cpu"
    # Most records one forget or verify request may carry.
    max_records: int = Field(100, ge=1, le=1000)
    # Most tokens a generate request may ask for.
    max_new_tokens: int = Field(256, ge=1, le=4096)
    # Seconds a generate request waits for a worker's answer before 504.
    generate_timeout_s: float = Field(60.0, gt=0, le=600)
    # RQ job timeouts per kind (seconds): the worker kills a job running longer.
    prepare_timeout_s: int = Field(7200, ge=10)
    forget_timeout_s: int = Field(3600, ge=10)
    verify_timeout_s: int = Field(3600, ge=10)
    export_timeout_s: int = Field(1800, ge=10)
    # How long RQ keeps a succeeded (failed) job, and so its arguments, in Redis. Short on
    # purpose: forget-request text travels in the arguments; results live in the store.
    # 0 deletes a succeeded job at once.
    result_ttl_s: int = Field(0, ge=0)
    failure_ttl_s: int = Field(600, ge=0)
    # Seconds to wait when connecting to Redis before answering 503.
    redis_connect_timeout_s: float = Field(2.0, gt=0, le=60)
    log_level: str = "INFO"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)}")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not str(value).strip():
            raise ValueError("must be a directory path")
        return value.expanduser().resolve()

    @field_validator("device_class")
    @classmethod
    def _device_class(cls, value: str) -> str:
        if not DEVICE_CLASS_RE.match(value):
            raise ValueError("must be lower-case letters, digits, '-' or '_' (e.g. cpu, gpu)")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @property
    def queue_name(self) -> str:
        """The RQ queue the workers of this device class listen on."""
        return f"zerounlearn-{self.device_class}"

    def job_timeout(self, kind: str) -> int:
        """RQ job_timeout (seconds) for a job kind."""
        if kind == "generate":
            return max(1, int(self.generate_timeout_s))
        return int(getattr(self, f"{kind}_timeout_s"))


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; SettingsError with one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            env = "REDIS_URL" if field in ("redis_url", "REDIS_URL") else ENV_PREFIX + field.upper()
            message = err["msg"].removeprefix("Value error, ")
            shown = (
                "" if env == "REDIS_URL" else f" (got {err.get('input')!r})"
            )  # may hold a password
            lines.append(f"{env}: {message}{shown}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
