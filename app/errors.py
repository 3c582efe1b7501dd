"""The one place where errors become HTTP responses: {"error": {"code", "message"}}.

Messages name what went wrong and which field; they never carry request text (a
forget request's prompts and answers are the data the caller wants gone).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from store import Conflict, NotFound, StoreError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API answers on purpose; subclasses fix the status and default code."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra or {}


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class NotFoundError(ApiError):
    status_code = 404
    code = "not_found"


class ConflictError(ApiError):
    status_code = 409
    code = "conflict"


class InvalidInput(ApiError):
    status_code = 422
    code = "invalid_input"


class Unavailable(ApiError):
    status_code = 503
    code = "unavailable"


class WorkerFailed(ApiError):
    status_code = 502
    code = "worker_failed"


class Timeout(ApiError):
    status_code = 504
    code = "timeout"


OVERLOADED = "overloaded"
"""Code of the 503 an API process answers beyond ZEROUNLEARN_MAX_CONNECTIONS (app.server),
with Retry-After."""


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message}, **extra}


def field_path(loc: Sequence[str | int]) -> str:
    """("body", "records", 0, "subject") -> "records[0].subject"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie") and len(parts) > 1:
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """One line per invalid field; pydantic's messages, never the rejected input."""
    lines = []
    for err in errors[:10]:
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        lines.append(f"{field_path(err.get('loc', ()))}: {msg}")
    if len(errors) > 10:
        lines.append(f"... and {len(errors) - 10} more")
    return "; ".join(lines)


def _json(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(code, message, **extra))


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    response = _json(exc.status_code, exc.code, exc.message, **exc.extra)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _json(422, "invalid_input", validation_message(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {
        404: "not_found", 405: "method_not_allowed", 400: "bad_request",
        408: "request_timeout", 413: "payload_too_large",
    }  # fmt: skip
    code = codes.get(exc.status_code, "http_error")
    response = _json(exc.status_code, code, str(exc.detail))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    kind = getattr(exc, "kind", "item")
    return _json(404, f"{kind}_not_found", str(exc))


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return _json(409, "conflict", str(exc))


async def _store_unavailable(_: Request, exc: Exception) -> JSONResponse:
    logger.error("artifact store unavailable: %s", type(exc).__name__)
    return _json(503, "store_unavailable", "the artifact store is unavailable; retry later")


async def _queue_unavailable(_: Request, exc: Exception) -> JSONResponse:
    logger.error("Redis unavailable: %s", type(exc).__name__)
    return _json(503, "queue_unavailable", "the job queue (Redis) is unreachable; retry later")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Type and route only: an exception's message could quote request text.
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return _json(500, "internal_error", "unexpected server error")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the API can meet to the one error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(StoreError, _store_unavailable)
    app.add_exception_handler(OSError, _store_unavailable)
    # the metadata database refused (full disk, locked, unreachable): a 503, not a 500
    app.add_exception_handler(OperationalError, _store_unavailable)
    app.add_exception_handler(RedisError, _queue_unavailable)
    app.add_exception_handler(Exception, _unexpected)
