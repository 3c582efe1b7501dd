"""Worker errors and the one place that turns any exception into a job's error document.

A job's error is `{"code", "message"}`. Codes are stable strings a client can switch on;
messages are for people. Neither may contain the text of a forget request: engine and
store errors promise that, and `error_document` also scrubs any message in which a
record's text appears (defence in depth) and never passes through the message of an
unexpected exception, which could quote anything.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from typing import Any

from rq.timeouts import JobTimeoutException

from store.errors import Conflict, InvalidDocument, NotFound, StoreError
from zerounlearn import errors as engine_errors


class WorkerError(Exception):
    """Base class of the errors the worker raises on purpose; `code` names the failure."""

    code = "worker_error"


class ModelNotReady(WorkerError):
    """The model is still preparing (or its preparation failed)."""

    code = "model_not_ready"


class BaseModelChanged(WorkerError):
    """The base model's files differ from the ones the model was prepared with."""

    code = "base_model_changed"


class PatchIntegrityError(WorkerError):
    """A stored patch file does not match the sha256 in its manifest."""

    code = "patch_corrupt"


class InvalidThresholds(WorkerError, ValueError):
    """A verify request gave an unknown or non-numeric threshold."""

    code = "invalid_thresholds"


class InvalidRequest(WorkerError, ValueError):
    """A task argument is malformed (the API validates first; this is the backstop)."""

    code = "invalid_request"


class RequestGone(WorkerError):
    """The stored request text was purged (retention passed) before the job ran."""

    code = "request_purged"


class WorkerStopped(WorkerError):
    """The worker was stopped (cold shutdown) while the job ran."""

    code = "worker_stopped"


class WorkerLost(WorkerError):
    """The worker that ran the job died (killed, out of memory) before it ended."""

    code = "worker_lost"


class QualityGateFailed(WorkerError):
    """The edited model fell short of the quality gate: nothing was published.

    `figures` (numbers only, never request text) goes into the job's error document."""

    code = "quality_gate_failed"

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


# Most specific first: the first isinstance match wins.
_ENGINE_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (engine_errors.InvalidRecord, "invalid_record"),
    (engine_errors.LayerOutOfRange, "layer_out_of_range"),
    (engine_errors.InvalidHyperParameters, "invalid_hparams"),
    (engine_errors.UnsupportedArchitecture, "unsupported_architecture"),
    (engine_errors.ModelLoadError, "model_load_failed"),
    (engine_errors.UnknownMethod, "unknown_method"),
    (engine_errors.NonFiniteResult, "non_finite_result"),
    (engine_errors.PatchMismatch, "patch_mismatch"),
    (engine_errors.EngineError, "engine_error"),
    (NotFound, "not_found"),
    (Conflict, "conflict"),
    (InvalidDocument, "invalid_document"),
    (StoreError, "store_error"),
)

STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Disk full, quota exceeded, file size limit: the store cannot take the write."""

SCRUBBED_MESSAGE = "the error message quoted request text and was withheld"
"""Replaces a message in which the text of a forget record appears."""

_MIN_SECRET_LEN = 4  # shorter fragments ("is", " 19") would match innocent messages


def error_code(exc: BaseException) -> str:
    """The stable code of an exception (see the module docstring)."""
    if isinstance(exc, WorkerError):
        return exc.code
    if isinstance(exc, JobTimeoutException):
        return "timeout"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out_of_memory"
    if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
        return "storage_full"
    if _wrapped_errno(exc) in STORAGE_FULL_ERRNOS:  # e.g. safetensors' "(os error 28)"
        return "storage_full"
    for cls, code in _ENGINE_CODES:
        if isinstance(exc, cls):
            return code
    return "internal_error"


def _wrapped_errno(exc: BaseException) -> int | None:
    """The errno a library (safetensors, written in Rust) quotes as "(os error N)"."""
    match = re.search(r"\(os error (\d+)\)", str(exc))
    return int(match.group(1)) if match else None


def error_document(
    exc: BaseException, *, secrets: Iterable[str] = (), job_id: str | None = None
) -> dict[str, Any]:
    """`{"code", "message"}` for a job document (a failed quality gate adds its figures
    as "quality_gate"); safe to store and to log."""
    code = error_code(exc)
    if code == "internal_error":
        where = f" (job {job_id})" if job_id else ""
        message = f"unexpected {type(exc).__name__} in the worker{where}; see the worker log"
    elif code == "timeout":
        message = "the job ran past its time limit and was stopped"
    elif code == "storage_full":
        message = "the artifact store ran out of space; nothing was published"
    elif code == "out_of_memory":
        message = f"the worker ran out of memory ({type(exc).__name__})"
    else:
        message = str(exc) or type(exc).__name__
    document: dict[str, Any] = {"code": code, "message": scrub(message, secrets)}
    if isinstance(exc, QualityGateFailed):
        document["quality_gate"] = exc.figures
    return document


def scrub(message: str, secrets: Iterable[str]) -> str:
    """`message`, or SCRUBBED_MESSAGE when any secret (record text) appears in it."""
    lowered = message.lower()
    for secret in secrets:
        text = secret.strip().lower()
        if len(text) >= _MIN_SECRET_LEN and text in lowered:
            return SCRUBBED_MESSAGE
    return message


def record_texts(records: Any) -> list[str]:
    """Every string inside the raw records of a request (prompts, answers, neighbours...)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(records)
    return found
