"""ArtifactStore: models, immutable versions and job documents, on an object backend.

Layout (keys; locally files under root = ZEROUNLEARN_DATA_DIR):
    models/{model_id}/model.json
    models/{model_id}/versions/{vN}/manifest.json [+ patch.safetensors locally]
    models/{model_id}/patches/{sha256}.safetensors   (object stores)
    retain/{model_id}.json   (the model's retain bank: private, like requests/)
    requests/{job_id}.json   (accepted requests, their text sealed: store.requests)
    secrets/data-keys/{request}.key   (per-request data keys: store.datakeys)
    jobs/{job_id}.json
    stats/  exports/{model_id}/{version}/
and, always on the local disk under root: cache/ (converted models) and, with an object
store, the local copies of patches and statistics.

Every document write is atomic. Versions are published as store.versions describes
(never half-written, never rewritten). Read-modify-write of a model or job is one
atomic `update` of the backend (an flock locally, compare-and-swap on an object
store), so two processes, on one machine or several, cannot both win a transition.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from store.audit import AuditLog
from store.backends import LocalBackend, ObjectBackend, open_backend
from store.datakeys import MASTER_KEY, DataKeys
from store.documents import (
    JOB_ID_RE,
    JOB_KINDS,
    MODEL_ID_RE,
    TERMINAL_JOB_STATUSES,
    VERSION_RE,
    check_job_status,
    check_model_status,
    manifest_defaults,
    new_job_id,
    new_model_id,
    utc_now,
)
from store.errors import Conflict, InvalidDocument, NotFound, StoreError
from store.files import TMP_PREFIX
from store.hashing import RECORD_SALT, salted_hash
from store.keys import KeyStore
from store.lifecycle import VersionLifecycle
from store.objects import dump, read_doc, update_doc
from store.requests import RequestStore
from store.retain import RetainStore
from store.secretfiles import load_or_create_secret
from store.sync import StatsSync, publish_export
from store.versions import MANIFEST_FILE, PATCH_FILE, DirectoryVersions, ObjectVersions

__all__ = ["MANIFEST_FILE", "PATCH_FILE", "ArtifactStore"]


class ArtifactStore:
    """The store. Cheap to construct: nothing is written before the first write.

    root: the local data directory (the whole store with the default local backend; with
    an object store only the local cache of big blobs). backend: where documents and
    blobs live (default: LocalBackend(root)).
    """

    def __init__(self, root: Path | str, backend: ObjectBackend | None = None) -> None:
        self.root = Path(root)
        self.backend = backend if backend is not None else LocalBackend(self.root)
        self.shared = not isinstance(self.backend, LocalBackend)
        self.keys = KeyStore(self.backend)
        self.audit = AuditLog(self.backend)
        self.data_keys = DataKeys(self.backend, self._master_key)
        self.requests = RequestStore(self.backend, self.data_keys)
        self.retain = RetainStore(self.backend, self._record_salt, self.data_keys)
        self.lifecycle = VersionLifecycle(self.backend)  # sealed, deleted, compacted
        self._versions: DirectoryVersions | ObjectVersions
        if isinstance(self.backend, LocalBackend):
            self._versions = DirectoryVersions(self.backend.root)
        else:
            self._versions = ObjectVersions(self.backend, self.root)
        self._stats = StatsSync(self.backend, self.root / "stats")
        self._salt: bytes | None = None
        self._master: bytes | None = None

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        store_url: str | None = None,
        *,
        s3_endpoint_url: str | None = None,
    ) -> ArtifactStore:
        """The store ZEROUNLEARN_STORE_URL names (None: the local directory data_dir)."""
        backend = open_backend(store_url, data_dir, s3_endpoint_url=s3_endpoint_url)
        return cls(data_dir, backend)

    def describe(self) -> str:
        """Where the store lives, for logs (never a credential)."""
        where = self.backend.describe()
        return where if not self.shared else f"{where} (local cache {self.root})"

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

    # ------------------------------------------------------------------- keys
    @staticmethod
    def _model_key(model_id: str) -> str:
        if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id):
            raise NotFound(f"model {model_id!r} not found", kind="model")
        return f"models/{model_id}/model.json"

    @staticmethod
    def _check_version(model_id: str, version: str) -> None:
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise NotFound(f"version {version!r} of model {model_id} not found", kind="version")

    @staticmethod
    def _job_key(job_id: str) -> str:
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise NotFound(f"job {job_id!r} not found", kind="job")
        return f"jobs/{job_id}.json"

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

    def exclusive(self, name: str, ttl_s: float = 300.0) -> contextlib.AbstractContextManager[bool]:
        """Without waiting: True when this process now holds `name` for the block, over
        every process of every machine using the store (a lease of ttl_s on an object
        store); False when another holds it. E.g. one reconciler pass at a time."""
        return self.backend.try_lock(f"exclusive/{name}", ttl_s)

    def check_writable(self) -> None:
        """Raise StoreError unless the local root and the backend accept a write."""
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

    # ----------------------------------------------------------------- models
    def create_model(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store a new model document; fills id, defaults and created_at when absent."""
        for key in ("name", "source"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise InvalidDocument(f"model document needs a non-empty string {key!r}")
        model = {
            "id": doc.get("id") or new_model_id(),
            "architecture": None,
            "num_layers": None,
            "edit_layers": None,
            "dtype": "float32",
            "active_version": "v0",
            "status": "preparing",
            "error": None,
            "created_at": utc_now(),
            **{k: v for k, v in doc.items() if k != "id"},
        }
        check_model_status(model["status"])
        if not self.backend.put_if_absent(self._model_key(model["id"]), dump(model)):
            raise Conflict(f"model {model['id']} already exists")
        return model

    def get_model(self, model_id: str) -> dict[str, Any]:
        """The model document; NotFound when there is none."""
        missing = NotFound(f"model {model_id!r} not found", kind="model")
        return read_doc(self.backend, self._model_key(model_id), missing)

    def list_models(self) -> list[dict[str, Any]]:
        """All models, oldest first."""
        models = []
        for name in self.backend.children("models/"):
            if name.endswith("/") and MODEL_ID_RE.match(name[:-1]):
                with contextlib.suppress(NotFound):
                    models.append(self.get_model(name[:-1]))
        return sorted(models, key=lambda m: (m.get("created_at") or "", m["id"]))

    def update_model(self, model_id: str, **fields: Any) -> dict[str, Any]:
        """Atomic read-modify-write of a model document; returns the new document."""
        if "id" in fields:
            raise InvalidDocument("a model's id cannot change")
        if "status" in fields:
            check_model_status(fields["status"])
        key = self._model_key(model_id)
        self.get_model(model_id)  # NotFound before any lock file is made
        missing = NotFound(f"model {model_id!r} not found", kind="model")
        model = update_doc(self.backend, key, lambda doc: {**doc, **fields}, missing)
        assert model is not None
        return model

    # --------------------------------------------------------------- versions
    def publish_version(
        self, model_id: str, manifest: dict[str, Any], patch_file: Path | None
    ) -> dict[str, Any]:
        """Publish an immutable version under the next free vN and return its manifest.

        The manifest's id is set here. patch_file (if any) is copied in; its bytes and
        sha256 are recorded (a given sha256 must match). Only record hashes may be
        stored: a record entry with any key but "sha256" is refused.
        """
        self.get_model(model_id)
        doc = manifest_defaults(manifest)
        if doc["parent"] is not None:
            self.get_version(model_id, doc["parent"])
        return self._versions.publish(model_id, doc, patch_file)

    def get_version(self, model_id: str, version: str) -> dict[str, Any]:
        """A version's manifest; NotFound for an unknown model or version."""
        self.get_model(model_id)
        self._check_version(model_id, version)
        manifest = self._versions.read(model_id, version)
        if manifest is None:
            raise NotFound(f"version {version!r} of model {model_id} not found", kind="version")
        return manifest

    def list_versions(self, model_id: str) -> list[dict[str, Any]]:
        """All published versions of a model, v0 first (never the .tmp-* leftovers)."""
        self.get_model(model_id)
        return [self.get_version(model_id, f"v{n}") for n in self._versions.numbers(model_id)]

    def version_numbers(self, model_id: str) -> list[int]:
        """The N of every published vN of a model, ascending; no manifest is read."""
        self.get_model(model_id)
        return self._versions.numbers(model_id)

    def patch_path(self, model_id: str, version: str) -> Path:
        """Local path of a version's patch file (downloaded into the local cache from an
        object store); NotFound when the version has none (v0)."""
        manifest = self.get_version(model_id, version)
        if manifest.get("patch") is None:
            raise NotFound(f"version {version} of model {model_id} has no patch", kind="patch")
        return self._versions.patch_path(model_id, version, manifest)

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
        if doc.get("kind") not in JOB_KINDS:
            raise InvalidDocument(f"job kind must be one of {', '.join(JOB_KINDS)}")
        if not isinstance(doc.get("model_id"), str):
            raise InvalidDocument("job document needs a model_id")
        job = {
            "id": doc.get("id") or new_job_id(),
            "version": None,
            "status": "queued",
            "progress": {"phase": None, "fraction": 0.0},
            "created_at": utc_now(),
            "started_at": None,
            "finished_at": None,
            "result": None,
            "error": None,
            **{k: v for k, v in doc.items() if k != "id"},
        }
        check_job_status(job["status"])
        if not self.backend.put_if_absent(self._job_key(job["id"]), dump(job)):
            raise Conflict(f"job {job['id']} already exists")
        return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job document; NotFound when there is none."""
        missing = NotFound(f"job {job_id!r} not found", kind="job")
        return read_doc(self.backend, self._job_key(job_id), missing)

    def list_jobs(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """All job documents (of one model when given), oldest first."""
        jobs = []
        for name in self.backend.children("jobs/"):
            if not (name.endswith(".json") and JOB_ID_RE.match(name[: -len(".json")])):
                continue
            with contextlib.suppress(NotFound):
                job = self.get_job(name[: -len(".json")])
                if model_id is None or job.get("model_id") == model_id:
                    jobs.append(job)
        return sorted(jobs, key=lambda j: (j.get("created_at") or "", j["id"]))

    def job_stamps(self) -> dict[str, str | None]:
        """Every job id -> a cheap change stamp of its document, from one listing and no
        document read (what a tally re-reads only when it changed): the backend's
        child_stamps (local: inode/mtime/size; S3: the ETag; None: unknown, read it).
        A stamp is taken before any read that follows, so a change in between shows
        as a different stamp next time (read again), never as a missed one.
        """
        return {job_id: stamp for name, stamp in self.backend.child_stamps("jobs/").items()
                if (job_id := _job_id(name))}

    def update_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Atomic read-modify-write of a job (progress, result...); returns the new document.

        Status changes belong in transition_job, which checks where the job stands.
        """
        if "id" in fields:
            raise InvalidDocument("a job's id cannot change")
        if "status" in fields:
            check_job_status(fields["status"])
        key = self._job_key(job_id)
        self.get_job(job_id)  # NotFound before any lock file is made
        missing = NotFound(f"job {job_id!r} not found", kind="job")
        job = update_doc(self.backend, key, lambda doc: {**doc, **fields}, missing)
        assert job is not None
        return job

    def transition_job(
        self, job_id: str, allowed_from: Iterable[str], to: str, **fields: Any
    ) -> dict[str, Any] | None:
        """Move a job to `to` if its status is in allowed_from; None (no write) otherwise.

        One atomic update (an flock locally, compare-and-swap on an object store), so of
        two racing transitions from "queued" (cancel and start) exactly one returns a
        document. Sets started_at on "running" and finished_at on a terminal status
        unless given.
        """
        check_job_status(to)
        allowed = set(allowed_from)
        for status in allowed:
            check_job_status(status)
        if "id" in fields or "status" in fields:
            raise InvalidDocument("transition_job sets the status itself; the id cannot change")
        key = self._job_key(job_id)
        self.get_job(job_id)

        def move(job: dict[str, Any]) -> dict[str, Any] | None:
            if job.get("status") not in allowed:
                return None
            now = utc_now()
            job["status"] = to
            if to == "running" and "started_at" not in fields:
                job["started_at"] = now
            if to in TERMINAL_JOB_STATUSES and "finished_at" not in fields:
                job["finished_at"] = now
            job.update(fields)
            return job

        return update_doc(self.backend, key, move, NotFound(f"job {job_id!r} not found",
                                                            kind="job"))


def _job_id(name: str) -> str | None:
    """The job id of a name under jobs/ ("j-....json"); None for anything else."""
    if name.endswith(".json") and JOB_ID_RE.match(name[: -len(".json")]):
        return name[: -len(".json")]
    return None
