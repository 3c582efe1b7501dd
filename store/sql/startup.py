"""What the API and the worker do with the database before they serve: migrate it to
the newest schema (concurrent starts are safe: store.sql.migrate.ensure_schema), warn
when an S3 store has no shared database, and refuse a data directory whose metadata is
still in the old JSON documents while the database is empty (serving it would look
like an empty service)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from store.errors import StoreError
from store.sql.legacy import has_documents
from store.sql.schema import AuditEntry, Job, Model

if TYPE_CHECKING:
    from store.artifacts import ArtifactStore

log = logging.getLogger(__name__)

IMPORT_COMMAND = "python -m cli.admin import-data-dir --data-dir {data_dir}"
"""The command that imports an old data directory (zerounlearn-admin import-data-dir where
that script is installed; python -m store.sql.import_data_dir is the same)."""

_warned = threading.Event()


class NotImported(StoreError):
    """The data directory holds old metadata documents and the database is empty."""


def prepare_database(store: ArtifactStore) -> None:
    """Migrate, warn, refuse (see the module docstring). Raises NotImported."""
    if store.shared and not store.database_url_given and not _warned.is_set():
        _warned.set()
        log.warning("the store is shared (%s) but ZEROUNLEARN_DATABASE_URL is not set: the "
                    "metadata goes to SQLite in %s, which other machines do not see; set "
                    "one shared PostgreSQL URL on every machine", store.backend.describe(),
                    store.root)
    meta = store.meta  # migrates to the newest schema on first use
    if not store.shared and has_documents(store.root) and _empty(store):
        raise NotImported(
            f"the data directory {store.root} holds metadata in the old JSON documents "
            f"and the database ({meta.describe()}) is empty: import it first with "
            f"`{IMPORT_COMMAND.format(data_dir=store.root)}` (the same as "
            "zerounlearn-admin import-data-dir), with ZEROUNLEARN_DATABASE_URL as the "
            "service has it, then start again")


def _empty(store: ArtifactStore) -> bool:
    with store.meta.db.read() as s:
        return not any(s.scalar(select(func.count()).select_from(table)) for table in
                       (Model, Job, AuditEntry))
