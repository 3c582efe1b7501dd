"""Statuses and kinds of the service's documents, as `StrEnum`s: the one list of each.

They live in the store because the store is the lowest layer that the API and the
worker both import (and it holds these values, in documents and SQL columns). A member
IS its string (`JobStatus.QUEUED == "queued"`, JSON and SQL see "queued"), so documents
read back as plain strings compare equal to the members, and nothing stored changes.
The API's Literal types (app/schemas.py) are built from the tuples below, so OpenAPI
lists the same strings in the same order.
"""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    """What a job does; each kind is one RQ task (app/queue.TASKS)."""

    FORGET = "forget"
    VERIFY = "verify"
    PREPARE = "prepare"
    EXPORT = "export"
    RETAIN = "retain"
    """Measure which retain-bank facts a model reproduces."""
    COMPACT = "compact"
    """Rewrite a version as one patch from v0."""
    GENERATE = "generate"
    """Interactive text generation: an RQ job with no document in the store."""


class JobStatus(StrEnum):
    """Every status a job document can hold: queued -> running -> one terminal status
    (or queued -> cancelled)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ModelStatus(StrEnum):
    """Lifecycle of a registered model: usable once the prepare job made it "ready"."""

    PREPARING = "preparing"
    READY = "ready"
    FAILED = "failed"


class FactStatus(StrEnum):
    """Measurement state of a retain-bank fact (store/retain.py)."""

    PENDING = "pending"
    """Not measured yet."""
    KNOWN = "known"
    """The model reproduces it, so forget edits protect it."""
    UNKNOWN = "unknown"
    """The model does not reproduce it: nothing to protect."""
    INVALID = "invalid"
    """It does not fit the model (too long, or no token)."""


class CallbackState(StrEnum):
    """Delivery state of a request's completion callback."""

    PENDING = "pending"
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"
    """Past ZEROUNLEARN_CALLBACK_MAX_AGE_S without a delivery."""


JOB_KINDS: tuple[JobKind, ...] = tuple(k for k in JobKind if k is not JobKind.GENERATE)
"""Kinds of job that have a document in the store (generate has none)."""

JOB_STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)

TERMINAL_JOB_STATUSES: tuple[JobStatus, ...] = (
    JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED,
)
"""Statuses a job never leaves."""

MODEL_STATUSES: tuple[ModelStatus, ...] = tuple(ModelStatus)

FACT_STATUSES: tuple[FactStatus, ...] = tuple(FactStatus)
