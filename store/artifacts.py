"""ArtifactStore: models, immutable versions and jobs; metadata in SQL, blobs on an
object backend.

Metadata (models, version manifests, jobs, API keys, idempotency records, the audit
trail, accepted requests, the version lifecycle) lives in one database
(store.sql.SqlMetadata): SQLite in the data directory by default, PostgreSQL when
several machines share the service (ZEROUNLEARN_DATABASE_URL). Transactions replace
the compare-and-swap and leases the JSON documents needed.

Blobs live on the object backend (keys; locally files under root = ZEROUNLEARN_DATA_DIR):
    models/{model_id}/patches/{sha256}.safetensors   (version patches: store.versions)
    models/{model_id}/compacted/...                  (store.compaction)
    retain/{model_id}.json   (the model's retain bank: private, sealed)
    secrets/data-keys/{request}.key   (per-request data keys: store.datakeys)
    stats/  exports/{model_id}/{version}/  checkpoints/
and, always on the local disk under root: cache/ (converted models) and, with an object
store, the local copies of patches and statistics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from store.backends import LocalBackend, ObjectBackend, open_backend
from store.datakeys import MASTER_KEY, DataKeys
from store.documents import MODEL_ID_RE, VERSION_RE, manifest_defaults
from store.errors import InvalidDocument, NotFound, StoreError
from store.files import TMP_PREFIX
from store.hashing import RECORD_SALT, salted_hash
from store.retain import RetainStore
from store.secretfiles import load_or_create_secret
from store.settings import DatabaseSettings
from store.sql.engine import default_url
from store.sql.locks import exclusive
from store.sql.metadata import SqlMetadata
from store.sql.migrate import ensure_schema
from store.sql.repositories import (
    AuditRepository,
    IdempotencyRepository,
    KeyRepository,
    LifecycleRepository,
    RequestRepository,
)
from store.sync import StatsSync, publish_export
from store.versions import PATCH_FILE, PatchBlobs

__all__ = ["PATCH_FILE", "ArtifactStore"]

log = logging.getLogger(__name__)


class ArtifactStore:
    """The store. Cheap to construct: the database is opened (and migrated to the newest
    schema, once per process and URL) on the first use of metadata.

    root: the local data directory (the whole blob store with the default local backend;
    with an object store only the local cache of big blobs). backend: where blobs live
    (default: LocalBackend(root)). database_url: the metadata database (default:
    ZEROUNLEARN_DATABASE_URL, else SQLite in root).
    """

    def __init__(
        self,
        root: Path | str,
        backend: ObjectBackend | None = None,
        database_url: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.backend = backend if backend is not None else LocalBackend(self.root)
        self.shared = not isinstance(self.backend, LocalBackend)
        configured = None if database_url else DatabaseSettings.load().database_url
        given = database_url or (configured.get_secret_value() if configured else None)
        self.database_url_given = bool(given)
        self.database_url = given or default_url(self.root)
        self.data_keys = DataKeys(self.backend, self._master_key)
        self.retain = RetainStore(self.backend, self._record_salt, self.data_keys)
        self._patches = PatchBlobs(self.backend, self.root)
        self._stats = StatsSync(self.backend, self.root / "stats")
        self._meta: SqlMetadata | None = None
        self._salt: bytes | None = None
        self._master: bytes | None = None

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        store_url: str | None = None,
        *,
        s3_endpoint_url: str | None = None,
        database_url: str | None = None,
    ) -> ArtifactStore:
        """The store ZEROUNLEARN_STORE_URL names (None: the local directory data_dir)."""
        backend = open_backend(store_url, data_dir, s3_endpoint_url=s3_endpoint_url)
        return cls(data_dir, backend, database_url)

    # ---------------------------------------------------------------- metadata
    @property
    def meta(self) -> SqlMetadata:
        """The metadata database (migrated on first use)."""
        if self._meta is None:
            ensure_schema(self.database_url)
            self._meta = SqlMetadata(self.database_url, self.data_keys)
        return self._meta

    @property
    def keys(self) -> KeyRepository:
        """API keys (store.sql.repositories.keys.KeyRepository)."""
        return self.meta.keys

    @property
    def audit(self) -> AuditRepository:
        """The audit trail (store.sql.repositories.audit.AuditRepository)."""
        return self.meta.audit

    @property
    def requests(self) -> RequestRepository:
        """Accepted requests (store.sql.repositories.requests.RequestRepository)."""
        return self.meta.requests

    @property
    def idempotency(self) -> IdempotencyRepository:
        """Idempotency records (store.sql.repositories.idempotency)."""
        return self.meta.idempotency

    @property
    def lifecycle(self) -> LifecycleRepository:
        """Seals, deletions, compactions (store.sql.repositories.lifecycle)."""
        return self.meta.lifecycle

    def close(self) -> None:
        """Close the database's pooled connections (before a fork, or at the end)."""
        if self._meta is not None:
            self._meta.close()
            self._meta = None

    def describe(self) -> str:
        """Where the store lives, for logs (never a credential)."""
        where = self.backend.describe()
        where = where if not self.shared else f"{where} (local cache {self.root})"
        return f"{where}; metadata in {self.meta.describe()}"

    def secret(self, name: str) -> bytes:
        """A server secret kept under secrets/ (owner-only), created on first use."""
        return load_or_create_secret(self.backend, name)

    def _record_salt(self) -> bytes:
        if self._salt is None:
            self._salt = self.secret(RECORD_SALT)
        return self._salt

    def _master_key(self) -> bytes:
        if self._master is None:
            self._master = self.secret(MASTER_KEY)
        return self._master

    def record_hashes(self, records: list[dict[str, Any]]) -> list[str]:
        """Salted hashes of request records: what stays once their text is purged."""
        salt = self._record_salt()
        return [salted_hash(salt, record) for record in records]

    # -------------------------------------------------------------- locations
    def _location(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def stats_dir(self) -> Path:
        """Root of the engine's StatsCache: local; shared through pull/push_stats."""
        return self._location("stats")

    @property
    def cache_dir(self) -> Path:
        """Engine cache_dir: converted builtin models (always local to the machine)."""
        return self._location("cache")

    @property
    def exports_dir(self) -> Path:
        """Exported checkpoints are written under exports/{model_id}/{version}/."""
        return self._location("exports")

    def pull_stats(self) -> list[str]:
        """Fetch statistics other workers computed into stats_dir (object stores; a
        no-op locally). Returns the names fetched."""
        return self._stats.pull()

    def push_stats(self) -> list[str]:
        """Share the statistics computed here (object stores; a no-op locally)."""
        return self._stats.push()

    def publish_export(self, model_id: str, version: str, local_dir: Path, marker: str) -> str:
        """Make a complete export (its `marker` file written last) reachable by every
        machine; returns where it is: the local path, or its s3:// URL."""
        return publish_export(self.backend, f"exports/{model_id}/{version}", local_dir, marker)

    @contextlib.contextmanager
    def exclusive(self, name: str, ttl_s: float = 300.0) -> Iterator[bool]:
        """Without waiting: True when this process now holds `name` for the block, over
        every process of every machine using the database; False when another holds
        it. E.g. one reconciler pass at a time (store.sql.locks; ttl_s is unused: the
        lock goes with the holder's connection or process)."""
        with exclusive(self.meta.db, name) as mine:
            yield mine

    def check_writable(self) -> None:
        """Raise StoreError unless the local root, the backend and the database accept
        a write."""
        probe = self.root / f"{TMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as fh:
                fh.write(b"ok")
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"store root is not writable: {exc.strerror or exc}") from exc
        if self.shared:
            key = f"health/probe-{uuid.uuid4().hex}"
            self.backend.put(key, b"ok")
            self.backend.delete(key)
        self.meta.ping()

    # ----------------------------------------------------------------- models
    def create_model(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store a new model document; fills id, defaults and created_at when absent."""
        return self.meta.models.create(doc)

    def get_model(self, model_id: str) -> dict[str, Any]:
        """The model document; NotFound when there is none."""
        if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id):
            raise NotFound(f"model {model_id!r} not found", kind="model")
        return self.meta.models.get(model_id)

    def list_models(
        self, *, limit: int | None = None, after: tuple[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Models oldest first; at most `limit`, those after the cursor `after`
        ((created_at, id) of the last model of the previous page)."""
        return self.meta.models.list(limit=limit, after=after)

    def update_model(self, model_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields of a model in one transaction; returns the new document."""
        self.get_model(model_id)
        return self.meta.models.update(model_id, **fields)

    # --------------------------------------------------------------- versions
    def publish_version(
        self, model_id: str, manifest: dict[str, Any], patch_file: Path | None
    ) -> dict[str, Any]:
        """Publish an immutable version under the next free vN and return its manifest.

        The manifest's id is set here. patch_file (if any) is uploaded first (content-
        addressed); its bytes and sha256 are recorded (a given sha256 must match); then
        the manifest is inserted in one transaction. Only record hashes may be stored: a
        record entry with any key but "sha256" is refused.
        """
        self.get_model(model_id)
        doc = manifest_defaults(manifest)
        if patch_file is not None:
            doc["patch"] = self._patches.upload(model_id, Path(patch_file), doc["patch"])
        elif doc["patch"] is not None:
            raise InvalidDocument("manifest describes a patch but no patch file was given")
        published = self.meta.versions.publish(model_id, doc)
        if patch_file is not None:
            self._patches.remember(model_id, published["id"], Path(patch_file))
        return published

    def get_version(self, model_id: str, version: str) -> dict[str, Any]:
        """A version's manifest; NotFound for an unknown model or version."""
        self.get_model(model_id)
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise NotFound(f"version {version!r} of model {model_id} not found", kind="version")
        return self.meta.versions.get(model_id, version)

    def list_versions(
        self, model_id: str, *, limit: int | None = None, after: int | None = None
    ) -> list[dict[str, Any]]:
        """Published versions of a model, v0 first; at most `limit`, those numbered
        above `after`."""
        self.get_model(model_id)
        return self.meta.versions.list(model_id, limit=limit, after=after)

    def version_numbers(self, model_id: str) -> list[int]:
        """The N of every published vN of a model, ascending; no manifest is read."""
        self.get_model(model_id)
        return self.meta.versions.numbers(model_id)

    def patch_path(self, model_id: str, version: str) -> Path:
        """Local path of a version's patch file (downloaded into the local cache from an
        object store); NotFound when the version has none (v0)."""
        manifest = self.get_version(model_id, version)
        if manifest.get("patch") is None:
            raise NotFound(f"version {version} of model {model_id} has no patch", kind="patch")
        return self._patches.patch_path(model_id, version, manifest)

    def lineage(self, model_id: str, version: str) -> list[str]:
        """Version ids from the root (v0) down to `version`, in application order."""
        chain: list[str] = []
        current: str | None = version
        while current is not None:
            if current in chain:
                raise StoreError(f"version chain of model {model_id} has a cycle at {current}")
            chain.append(current)
            current = self.get_version(model_id, current).get("parent")
        return chain[::-1]

    # ------------------------------------------------------------------- jobs
    def create_job(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store a new job document (status "queued" unless given); fills id and defaults."""
        return self.meta.jobs.create(doc)

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job document; NotFound when there is none."""
        return self.meta.jobs.get(job_id)

    def list_jobs(
        self,
        model_id: str | None = None,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        after: tuple[str, str] | None = None,
        models: Collection[str] | None = None,
        descending: bool = False,
    ) -> list[dict[str, Any]]:
        """Jobs oldest first (descending: newest first), filtered by model, status,
        kind and a set of allowed models (indexed); at most `limit`, those after the
        cursor `after` ((created_at, id) of the last job of the previous page)."""
        return self.meta.jobs.list(model_id, status=status, kind=kind, limit=limit,
                                   after=after, models=models, descending=descending)

    def job_stamps(self) -> dict[str, str | None]:
        """Every job id -> a change stamp (its row's updated_at and status), from one
        query of two narrow columns and no document (what the metrics tally re-reads
        only when it changed)."""
        return self.meta.jobs.stamps()

    def update_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields of a job (progress, result...) in one transaction; returns the
        new document. Status changes belong in transition_job."""
        return self.meta.jobs.update(job_id, **fields)

    def transition_job(
        self, job_id: str, allowed_from: Iterable[str], to: str, **fields: Any
    ) -> dict[str, Any] | None:
        """Move a job to `to` if its status is in allowed_from; None (no write) otherwise.

        One transaction holding the job's row lock (SQLite: the write lock), so of two
        racing transitions from "queued" (cancel and start) exactly one returns a
        document. Sets started_at on "running" and finished_at on a terminal status
        unless given.
        """
        return self.meta.jobs.transition(job_id, allowed_from, to, **fields)
