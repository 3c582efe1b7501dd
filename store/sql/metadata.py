"""SqlMetadata: every repository over one database, the way ArtifactStore groups the
document stores (the wiring of the service will hold one of these)."""

from __future__ import annotations

from sqlalchemy.engine import URL

from store.datakeys import DataKeys
from store.sql.engine import Database
from store.sql.repositories import (
    AuditRepository,
    IdempotencyRepository,
    JobRepository,
    KeyRepository,
    LifecycleRepository,
    ModelRepository,
    RequestRepository,
    VersionRepository,
)


class SqlMetadata:
    """The metadata of one installation. data_keys: where the per-request data keys
    live (the object backend's secrets/, apart from the database that holds the
    ciphertext). The schema must be migrated first (store.sql.migrate.upgrade)."""

    def __init__(self, url: str | URL, data_keys: DataKeys) -> None:
        self.db = Database(url)
        self.models = ModelRepository(self.db)
        self.versions = VersionRepository(self.db)
        self.jobs = JobRepository(self.db)
        self.keys = KeyRepository(self.db)
        self.idempotency = IdempotencyRepository(self.db)
        self.audit = AuditRepository(self.db)
        self.requests = RequestRepository(self.db, data_keys)
        self.lifecycle = LifecycleRepository(self.db)

    def describe(self) -> str:
        return self.db.describe()

    def ping(self) -> None:
        self.db.ping()

    def close(self) -> None:
        self.db.dispose()
