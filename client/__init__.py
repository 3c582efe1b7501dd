"""A small typed Python client of the ZeroUnlearn API (httpx).

    from client import Client, NotFound
    with Client("http://127.0.0.1:8000", token) as api:
        job = api.forget(model_id, records, hparams=...)
        done = api.wait_job(job["job_id"])

Errors are the API's: every non-2xx answer raises an `ApiError` subclass chosen by
status (and code), carrying `status`, `code` and `message`.
"""

from client.api import Client, ProgressCallback
from client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Invalid,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
    WorkerFailed,
)

__all__ = [
    "ApiError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Invalid",
    "JobFailed",
    "NotFound",
    "PayloadTooLarge",
    "ProgressCallback",
    "ServerError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "WorkerFailed",
]
