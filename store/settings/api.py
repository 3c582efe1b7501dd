"""The API's own settings (on top of ServiceSettings), and the local stack's.

`app.settings.Settings` is ApiSettings under the name the API's modules use.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator

from store.enums import JobKind
from store.settings.service import ServiceSettings
from store.settings.source import EMPTY_IS_A_VALUE, EnvSettings

HEX_SEED_RE = re.compile(r"^[0-9a-fA-F]{64}$")
BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"  # zerounlearn.BUILTIN_SMOLLM2, not imported


class ConnectionSettings(EnvSettings):
    """Slow clients and floods, per API process (README "Abuse resistance"). A class of
    its own: the HTTP protocol (app.server) reads it in every uvicorn process."""

    readers = "API"

    header_timeout_s: float = Field(10.0, gt=0, le=600, description=(
        "seconds a connection may take to send a request's headers (then closed)"))
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description=(
        "seconds a request may take to send its whole body (then 408 and closed)"))
    keepalive_timeout_s: int = Field(5, ge=1, le=600, description=(
        "seconds an idle keep-alive connection stays open"))
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576, description=(
        "largest request line plus headers a connection may send (then closed)"))
    max_connections: int = Field(1000, ge=1, le=100_000, description=(
        "open connections plus running requests per process; beyond: 503 at once"))


RateLimit = Annotated[str, EMPTY_IS_A_VALUE]
"""The `limits` package's syntax, ";" between several; "" switches the limit off."""


class ApiSettings(ServiceSettings, ConnectionSettings):
    """Everything the API can be told from outside; one instance per app (app.state)."""

    readers = "API"

    api_workers: int = Field(1, ge=1, le=256, description=(
        "API processes sharing the port (python -m app --workers N); one core each"))
    max_records: int = Field(100, ge=1, le=1000, description=(
        "most records one forget or verify request may carry"))
    max_new_tokens: int = Field(256, ge=1, le=4096, description=(
        "most tokens a generate request may ask for"))
    generate_timeout_s: float = Field(60.0, gt=0, le=600, description=(
        "seconds a generate request waits for a worker's answer (then 504)"))
    # RQ job timeouts per kind: the worker kills a job running longer
    prepare_timeout_s: int = Field(7200, ge=10, description="RQ timeout of a prepare job")
    forget_timeout_s: int = Field(3600, ge=10, description="RQ timeout of a forget job")
    verify_timeout_s: int = Field(3600, ge=10, description="RQ timeout of a verify job")
    export_timeout_s: int = Field(1800, ge=10, description="RQ timeout of an export job")
    retain_timeout_s: int = Field(1800, ge=10, description=(
        "RQ timeout of a job that measures a retain bank"))
    compact_timeout_s: int = Field(1800, ge=10, description=(
        "RQ timeout of a compaction (a version rewritten as one patch)"))
    # Short on purpose: forget-request text travels in the job's arguments
    result_ttl_s: int = Field(0, ge=0, description=(
        "seconds RQ keeps a succeeded job (and its arguments); 0: deleted at once"))
    failure_ttl_s: int = Field(600, ge=0, description="seconds RQ keeps a failed job")
    redis_connect_timeout_s: float = Field(2.0, gt=0, le=60, description=(
        "seconds to wait for Redis before answering 503"))
    prometheus_multiproc_dir: Path | None = Field(
        None, validation_alias="PROMETHEUS_MULTIPROC_DIR", description=(
            "prometheus_client's directory for several API processes; unset: a private "
            "temporary one with --workers > 1"))

    # --- security (README "Security model")
    auth: Literal["enabled", "disabled"] = Field("enabled", description=(
        "disabled turns authentication off: development on one machine only"))
    admin_token: SecretStr | None = Field(None, min_length=32, max_length=512, description=(
        "bootstrap admin API key (32+ characters); a changed value revokes the old one"))
    receipt_key: SecretStr | None = Field(None, description=(
        "Ed25519 seed (64 hex digits) signing receipts and checkpoints; unset: generated"))
    callback_secret: SecretStr | None = Field(None, min_length=32, description=(
        "callback signing key: whsec_<base64> or 32+ characters; unset: generated"))
    audit_checkpoint_interval_s: float = Field(3600.0, gt=0, le=7 * 86400, description=(
        "sign the audit trail's head when it moved and the last checkpoint is this old"))
    callback_allowed_hosts: str = Field("", description=(
        "comma-separated hosts callbacks may go to: host, host:port, [v6]; empty: none"))
    callback_backoff_s: float = Field(2.0, gt=0, le=600, description=(
        "first retry delay of a failed callback (doubling)"))
    callback_backoff_max_s: float = Field(300.0, gt=0, description=(
        "longest delay between callback retries"))
    callback_max_age_s: float = Field(3600.0, gt=0, description=(
        "seconds a callback is retried before it is given up"))
    callback_timeout_s: float = Field(5.0, gt=0, le=60, description=(
        "deadline of one callback attempt (connect, TLS, send, status line)"))
    callback_workers: int = Field(4, ge=1, le=64, description=(
        "threads per API process that deliver callbacks"))
    # receivers behind a private CA; the certificate must still name the URL's host
    callback_ca_file: Path | None = Field(None, description=(
        "PEM file of extra CAs trusted for HTTPS callbacks, on top of the system's"))
    request_retention_s: float = Field(300.0, ge=0, description=(
        "seconds a finished job's request text is kept before it is purged"))
    reconcile_interval_s: float = Field(5.0, gt=0, le=3600, description=(
        "reconciler period: re-enqueue lost jobs, deliver callbacks, purge text"))
    reconcile_grace_s: float = Field(10.0, ge=0, description=(
        "a queued request younger than this is never re-enqueued"))
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576, description=(
        "largest request body (413 beyond)"))
    model_roots: str = Field("", description=(
        "os.pathsep-separated directories model sources must lie in (builtin: always)"))
    # counted in Redis, so every API process shares them
    rate_limit_per_key: RateLimit = Field("1200/minute", description=(
        'requests per API key ("20/second;1200/minute"; "": off)'))
    rate_limit_per_address: RateLimit = Field("2400/minute", description=(
        'requests per client address, IPv6 per /64 ("": off)'))

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

    @field_validator("callback_ca_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.expanduser().is_file()
                                      and os.access(value.expanduser(), os.R_OK)):
            raise ValueError("must be a readable PEM file of CA certificates")
        return value.expanduser().resolve() if value is not None else None

    @field_validator("rate_limit_per_key", "rate_limit_per_address")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        if value.strip():
            from limits import parse_many  # the API's dependency, not the worker's

            try:
                parse_many(value)
            except ValueError:
                raise ValueError('must look like "600/minute" or "10/second;600/hour" '
                                 '(empty: no limit)') from None
        return value.strip()

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

    def job_timeout(self, kind: str) -> int:
        """RQ job_timeout (seconds) for a job kind."""
        if kind == JobKind.GENERATE:
            return max(1, int(self.generate_timeout_s))
        return int(getattr(self, f"{kind}_timeout_s"))


class LocalStackSettings(ApiSettings):
    """`python -m app.local_stack`: the API's settings and two of its own."""

    readers = "local stack"

    demo_model: str = Field(BUILTIN_SMOLLM2, description=(
        "model the stack registers at start (a builtin: name or a directory); none: no model"))
    interactive_worker: bool = Field(True, description=(
        "also start a worker that serves only the interactive queue"))
