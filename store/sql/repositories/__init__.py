"""Repositories: in SQL what the document stores do, with the same method names and
return shapes (store.artifacts, keys, requests, audit, lifecycle)."""

from store.sql.repositories.audit import AuditRepository
from store.sql.repositories.idempotency import IDEMPOTENCY_TTL, IdempotencyRepository
from store.sql.repositories.jobs import JobRepository
from store.sql.repositories.keys import KeyRepository, LastAdminKey
from store.sql.repositories.lifecycle import LifecycleRepository
from store.sql.repositories.models import ModelRepository, VersionRepository
from store.sql.repositories.requests import RequestRepository

__all__ = [
    "IDEMPOTENCY_TTL",
    "AuditRepository",
    "IdempotencyRepository",
    "JobRepository",
    "KeyRepository",
    "LastAdminKey",
    "LifecycleRepository",
    "ModelRepository",
    "RequestRepository",
    "VersionRepository",
]
