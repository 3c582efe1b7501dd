"""The API's errors as exceptions: one class per status, the API's code kept."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A non-2xx answer: `status`, the API's `code` and `message`."""

    status: int = 0
    default_code = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.code = code or self.default_code
        self.body = body or {}

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status else ""
        return f"{prefix}{self.code}: {self.message}"


class Unauthorized(ApiError):
    status, default_code = 401, "unauthorized"


class Forbidden(ApiError):
    status, default_code = 403, "forbidden"


class NotFound(ApiError, KeyError):
    status, default_code = 404, "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return ApiError.__str__(self)


class Conflict(ApiError):
    status, default_code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, default_code = 413, "payload_too_large"


class Invalid(ApiError, ValueError):
    status, default_code = 422, "invalid_input"


class ServerError(ApiError):
    status, default_code = 500, "internal_error"


class WorkerFailed(ServerError):
    status, default_code = 502, "worker_failed"


class Unavailable(ServerError):
    status, default_code = 503, "unavailable"


class Timeout(ServerError):
    status, default_code = 504, "timeout"


class ConnectionFailed(Unavailable):
    """The API could not be reached at all (no HTTP answer)."""

    status, default_code = 0, "connection_failed"


class JobFailed(ApiError):
    """A job waited for ended failed or cancelled; `job` is its document."""

    default_code = "job_failed"

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        code = error.get("code") or str(job.get("status"))
        message = error.get("message") or f"job {job.get('id')} is {job.get('status')}"
        super().__init__(message, code=code)
        self.job = job


BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: Invalid, 400: Invalid, 502: WorkerFailed, 503: Unavailable, 504: Timeout,
}  # fmt: skip


def error_for(status: int, body: Any) -> ApiError:
    """The exception for an error answer with JSON `body` (the API's error shape)."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(message or f"HTTP {status}", status=status, code=code,
               body=body if isinstance(body, dict) else None)
