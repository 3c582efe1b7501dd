"""The artifact store: metadata (models, versions, jobs, keys, requests, audit) in a
SQL database (store.sql: SQLite by default, PostgreSQL for several machines) and blobs
on an object backend: a local directory (default) or S3-compatible storage
(store.backends).

Plain Python, SQLAlchemy, JSON, os (and boto3 for S3): no torch, no engine import, so
the API can use it.
"""

from store.artifacts import ArtifactStore
from store.documents import new_job_id, new_model_id, utc_now
from store.enums import (
    JOB_KINDS,
    JOB_STATUSES,
    MODEL_STATUSES,
    TERMINAL_JOB_STATUSES,
    JobKind,
    JobStatus,
    ModelStatus,
)
from store.errors import Conflict, InvalidDocument, NotFound, StoreError

__all__ = [
    "JOB_KINDS",
    "JOB_STATUSES",
    "MODEL_STATUSES",
    "TERMINAL_JOB_STATUSES",
    "ArtifactStore",
    "Conflict",
    "InvalidDocument",
    "JobKind",
    "JobStatus",
    "ModelStatus",
    "NotFound",
    "StoreError",
    "new_job_id",
    "new_model_id",
    "utc_now",
]
