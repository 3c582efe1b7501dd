"""API settings: environment variables, validated once at start-up.

Every setting is `ZEROUNLEARN_<NAME>` except REDIS_URL, which is read without the
prefix (the convention the worker and docker-compose share).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ZEROUNLEARN_"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
DEVICE_CLASS_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
HEX_SEED_RE = re.compile(r"^[0-9a-fA-F]{64}$")


SECRET_FIELDS = ("admin_token", "receipt_key", "callback_secret")
"""Settings whose values are never echoed in an error message."""

GATE_FIELDS = ("max_perplexity_increase", "max_efficacy", "max_neighbor_drop", "max_guard_drop")
"""The quality gate's limits: `gate_<name>` (default) and `gate_limit_<name>` (loosest)."""


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
    # ZEROUNLEARN_STORE_URL: unset = data_dir is the store; s3://bucket/prefix = an
    # S3-compatible store shared by every machine (data_dir is then a local cache).
    store_url: str | None = Field(None, pattern=r"^((s3|file)://.+)?$")
    # ZEROUNLEARN_S3_ENDPOINT_URL: the S3 API of MinIO, moto... (unset: AWS).
    s3_endpoint_url: str | None = None
    # ZEROUNLEARN_DATABASE_URL: the metadata database (models, versions, jobs, keys,
    # requests, audit). Unset: SQLite, data_dir/metadata.sqlite3 (one machine). Several
    # machines (an S3 store_url) need one shared database: postgresql+psycopg://user:
    # password@host/db; with S3 and no URL each machine would keep its own metadata
    # (a warning is logged at start-up). Never logged with its password.
    database_url: SecretStr | None = None
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
    retain_timeout_s: int = Field(1800, ge=10)  # measuring a retain bank
    compact_timeout_s: int = Field(1800, ge=10)  # a version rewritten as one patch
    # How long RQ keeps a succeeded (failed) job, and so its arguments, in Redis. Short on
    # purpose: forget-request text travels in the arguments; results live in the store.
    # 0 deletes a succeeded job at once.
    result_ttl_s: int = Field(0, ge=0)
    failure_ttl_s: int = Field(600, ge=0)
    # Seconds to wait when connecting to Redis before answering 503.
    redis_connect_timeout_s: float = Field(2.0, gt=0, le=60)
    log_level: str = "INFO"

    # --- security (see README "Security model")
    # "disabled" turns authentication off: for development on one machine only.
    auth: Literal["enabled", "disabled"] = "enabled"
    # Bootstrap admin key (at least 32 characters); a changed value revokes the old one.
    admin_token: SecretStr | None = Field(None, min_length=32, max_length=512)
    # Ed25519 key (64 hex digits: the 32-byte seed) that signs receipts and audit
    # checkpoints; default: generated keys in the store's secrets, rotated by an admin.
    receipt_key: SecretStr | None = None
    # Callback (Standard Webhooks) secret: whsec_<base64 of the key bytes>, or any other
    # string (its UTF-8 bytes are the key); default: a generated file under <data_dir>/secrets.
    callback_secret: SecretStr | None = Field(None, min_length=32)
    # Sign the audit trail's head when it moved and the last checkpoint is this old.
    audit_checkpoint_interval_s: float = Field(3600.0, gt=0, le=7 * 86400)
    # Comma-separated hosts callbacks may go to: host, host:port, [v6], [v6]:port; empty: none.
    callback_allowed_hosts: str = ""
    # Retry a failed callback with exponential backoff (base, cap) for at most max_age.
    callback_backoff_s: float = Field(2.0, gt=0, le=600)
    callback_backoff_max_s: float = Field(300.0, gt=0)
    callback_max_age_s: float = Field(3600.0, gt=0)
    # Total deadline of one callback attempt (connect, TLS, send, status line).
    callback_timeout_s: float = Field(5.0, gt=0, le=60)
    # Threads of each API process that deliver callbacks (off the reconciler).
    callback_workers: int = Field(4, ge=1, le=64)
    # PEM file of extra CAs trusted for HTTPS callbacks (receivers behind a private CA),
    # on top of the system's; the certificate must still name the URL's host. Unset: none.
    callback_ca_file: Path | None = None
    # Seconds a finished job's request text is kept (for retries and checks) before purge.
    request_retention_s: float = Field(300.0, ge=0)
    # Reconciler period: re-enqueue lost jobs, deliver callbacks, purge request text.
    reconcile_interval_s: float = Field(5.0, gt=0, le=3600)
    # A queued request younger than this is never re-enqueued (its enqueue may be in flight).
    reconcile_grace_s: float = Field(10.0, ge=0)
    # Largest request body accepted (413 beyond).
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    # os.pathsep-separated directories model sources must lie in (builtin always allowed).
    model_roots: str = ""

    # --- slow clients and abuse (README "Abuse resistance"); per API process.
    # Seconds a connection may take to send a request's headers (slowloris: closed).
    header_timeout_s: float = Field(10.0, gt=0, le=600)
    # Seconds a request may take to send its whole body (408 and closed beyond).
    body_timeout_s: float = Field(30.0, gt=0, le=3600)
    # Seconds an idle keep-alive connection stays open between requests.
    keepalive_timeout_s: int = Field(5, ge=1, le=600)
    # Largest request line + headers (bytes) a connection may buffer (closed beyond).
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576)
    # Open connections plus running requests per process; beyond: 503 at once.
    max_connections: int = Field(1000, ge=1, le=100_000)
    # Rate limits (the `limits` package's syntax, ";" between several: "20/second;1200/minute"),
    # counted in Redis so every API process shares them; "" switches one off.
    rate_limit_per_key: str = "1200/minute"
    rate_limit_per_address: str = "2400/minute"

    # --- quality gate of forget edits (README "Quality gate"; the workers read the same
    # variables). Defaults a request may tighten; limits an admin may loosen them to.
    gate_max_perplexity_increase: float = Field(25.0, ge=0, le=1e6, allow_inf_nan=False)
    gate_max_efficacy: float = Field(50.0, ge=0, le=100, allow_inf_nan=False)
    gate_max_neighbor_drop: float = Field(50.0, ge=0, le=100, allow_inf_nan=False)
    gate_max_guard_drop: float = Field(25.0, ge=0, le=100, allow_inf_nan=False)
    gate_limit_max_perplexity_increase: float = Field(100.0, ge=0, le=1e6, allow_inf_nan=False)
    gate_limit_max_efficacy: float = Field(100.0, ge=0, le=100, allow_inf_nan=False)
    gate_limit_max_neighbor_drop: float = Field(100.0, ge=0, le=100, allow_inf_nan=False)
    gate_limit_max_guard_drop: float = Field(50.0, ge=0, le=100, allow_inf_nan=False)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)}")
        return value

    @field_validator("receipt_key")
    @classmethod
    def _ed25519_seed(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not HEX_SEED_RE.match(value.get_secret_value()):
            raise ValueError("must be 64 hex digits (an Ed25519 seed: openssl rand -hex 32)")
        return value

    @field_validator("callback_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else ""
        if text.startswith("whsec_"):
            try:
                key = base64.b64decode(text[len("whsec_"):], validate=True)
            except binascii.Error:
                raise ValueError("whsec_ must be followed by base64") from None
            if len(key) < 24:
                raise ValueError("the whsec_ key must hold at least 24 bytes")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None  # an empty variable (compose's `${VAR:-}`) means unset, as in the worker
        if value is not None and not value.get_secret_value().startswith(
                ("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must be sqlite:///path or "
                             "postgresql+psycopg://user:password@host/database")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not str(value).strip():
            raise ValueError("must be a directory path")
        return value.expanduser().resolve()

    @field_validator("callback_ca_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.expanduser().is_file()
                                      and os.access(value.expanduser(), os.R_OK)):
            raise ValueError("must be a readable PEM file of CA certificates")
        return value.expanduser().resolve() if value is not None else None

    @field_validator("device_class")
    @classmethod
    def _device_class(cls, value: str) -> str:
        if not DEVICE_CLASS_RE.match(value):
            raise ValueError("must be lower-case letters, digits, '-' or '_' (e.g. cpu, gpu)")
        return value

    @field_validator("rate_limit_per_key", "rate_limit_per_address")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        if value.strip():
            from limits import parse_many

            try:
                parse_many(value)
            except ValueError:
                raise ValueError('must look like "600/minute" or "10/second;600/hour" '
                                 '(empty: no limit)') from None
        return value.strip()

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @model_validator(mode="after")
    def _gate_within_limits(self) -> Settings:
        for name in GATE_FIELDS:
            if getattr(self, f"gate_{name}") > getattr(self, f"gate_limit_{name}"):
                raise ValueError(f"{ENV_PREFIX}GATE_{name.upper()} is above its limit "
                                 f"{ENV_PREFIX}GATE_LIMIT_{name.upper()}")
        return self

    @property
    def gate_defaults(self) -> dict[str, float]:
        """The quality gate a forget request gets unless it says otherwise."""
        return {name: getattr(self, f"gate_{name}") for name in GATE_FIELDS}

    @property
    def gate_limits(self) -> dict[str, float]:
        """The loosest values an admin may ask for."""
        return {name: getattr(self, f"gate_limit_{name}") for name in GATE_FIELDS}

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "enabled"

    @property
    def allowed_callback_hosts(self) -> frozenset[str]:
        hosts = self.callback_allowed_hosts.split(",")
        return frozenset(h.strip().lower() for h in hosts if h.strip())

    @property
    def model_root_paths(self) -> tuple[Path, ...]:
        """The configured model roots, resolved (symlinks followed)."""
        parts = [p.strip() for p in self.model_roots.split(os.pathsep) if p.strip()]
        return tuple(Path(p).expanduser().resolve() for p in parts)

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
            if not err["loc"]:  # a check across settings: its message names them
                lines.append(err["msg"].removeprefix("Value error, "))
                continue
            field = str(err["loc"][0])
            env = "REDIS_URL" if field in ("redis_url", "REDIS_URL") else ENV_PREFIX + field.upper()
            message = err["msg"].removeprefix("Value error, ")
            secret = env == "REDIS_URL" or field in SECRET_FIELDS  # may hold a password
            shown = "" if secret else f" (got {err.get('input')!r})"
            lines.append(f"{env}: {message}{shown}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
