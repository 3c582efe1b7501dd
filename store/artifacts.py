"""ArtifactStore: models, immutable versions and job documents under one root.

Layout (root = ZEROUNLEARN_DATA_DIR):
    models/{model_id}/model.json
    models/{model_id}/versions/{vN}/manifest.json [+ patch.safetensors]
    jobs/{job_id}.json
    stats/  cache/  exports/{model_id}/{version}/

Every document write is atomic (temp file + fsync + os.replace). A version is
published by filling `versions/.tmp-<uuid>/` and renaming it to the next free `vN`;
a crash leaves only `.tmp-*` entries, which are never listed. Read-modify-write of a
model or job holds an flock on a sidecar lock file, so two processes cannot both win
a status transition.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from store.audit import AuditLog
from store.documents import (
    JOB_ID_RE,
    JOB_KINDS,
    MODEL_ID_RE,
    TERMINAL_JOB_STATUSES,
    VERSION_RE,
    check_job_status,
    check_model_status,
    copy_patch,
    manifest_defaults,
    new_job_id,
    new_model_id,
    utc_now,
    version_number,
)
from store.errors import Conflict, InvalidDocument, NotFound, StoreError
from store.files import (
    TMP_PREFIX,
    fsync_dir,
    locked,
    read_json,
    write_json_atomic,
)
from store.hashing import RECORD_SALT, salted_hash
from store.keys import KeyStore
from store.requests import RequestStore
from store.secretfiles import load_or_create_secret

MANIFEST_FILE = "manifest.json"
PATCH_FILE = "patch.safetensors"
_MAX_PUBLISH_ATTEMPTS = 1000


class ArtifactStore:
    """The file-backed store. Cheap to construct: directories are made on first write."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.keys = KeyStore(self.root)
        self.audit = AuditLog(self.root)
        self.requests = RequestStore(self.root)
        self._salt: bytes | None = None

    def secret(self, name: str) -> bytes:
        """A server secret kept under secrets/ (0600), created on first use."""
        return load_or_create_secret(self.root, name)

    def record_hashes(self, records: list[dict[str, Any]]) -> list[str]:
        """Salted hashes of request records: what stays once their text is purged."""
        if self._salt is None:
            self._salt = self.secret(RECORD_SALT)
        return [salted_hash(self._salt, record) for record in records]

    # ------------------------------------------------------------------ paths
    def _model_dir(self, model_id: str) -> Path:
        if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id):
            raise NotFound(f"model {model_id!r} not found", kind="model")
        return self.root / "models" / model_id

    def _versions_dir(self, model_id: str) -> Path:
        return self._model_dir(model_id) / "versions"

    def _version_dir(self, model_id: str, version: str) -> Path:
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise NotFound(f"version {version!r} of model {model_id} not found", kind="version")
        return self._versions_dir(model_id) / version

    def _job_path(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise NotFound(f"job {job_id!r} not found", kind="job")
        return self.root / "jobs" / f"{job_id}.json"

    def _job_lock(self, job_id: str) -> Path:
        return self.root / "jobs" / ".locks" / f"{job_id}.lock"

    def _location(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def stats_dir(self) -> Path:
        """Root of the engine's StatsCache (shared by workers)."""
        return self._location("stats")

    @property
    def cache_dir(self) -> Path:
        """Engine cache_dir: converted builtin models."""
        return self._location("cache")

    @property
    def exports_dir(self) -> Path:
        """Exported checkpoints live under exports/{model_id}/{version}/."""
        return self._location("exports")

    def check_writable(self) -> None:
        """Raise StoreError unless a file can be created, synced and removed under root."""
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

    @staticmethod
    def _read(path: Path, missing: NotFound) -> dict[str, Any]:
        try:
            doc = read_json(path)
        except FileNotFoundError:
            raise missing from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path.name} is not valid JSON") from exc
        if not isinstance(doc, dict):
            raise StoreError(f"{path.name} does not hold a JSON object")
        return doc

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
        model_dir = self._model_dir(model["id"])
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            model_dir.mkdir()
        except FileExistsError:
            raise Conflict(f"model {model['id']} already exists") from None
        write_json_atomic(model_dir / "model.json", model)
        return model

    def get_model(self, model_id: str) -> dict[str, Any]:
        """The model document; NotFound when there is none."""
        path = self._model_dir(model_id) / "model.json"
        return self._read(path, NotFound(f"model {model_id!r} not found", kind="model"))

    def list_models(self) -> list[dict[str, Any]]:
        """All models, oldest first."""
        base = self.root / "models"
        if not base.is_dir():
            return []
        models = []
        for entry in base.iterdir():
            if MODEL_ID_RE.match(entry.name):
                with contextlib.suppress(NotFound):
                    models.append(self.get_model(entry.name))
        return sorted(models, key=lambda m: (m.get("created_at") or "", m["id"]))

    def update_model(self, model_id: str, **fields: Any) -> dict[str, Any]:
        """Locked read-modify-write of a model document; returns the new document."""
        if "id" in fields:
            raise InvalidDocument("a model's id cannot change")
        if "status" in fields:
            check_model_status(fields["status"])
        model_dir = self._model_dir(model_id)
        self.get_model(model_id)  # NotFound before any lock file is made
        with locked(model_dir / ".lock"):
            model = self.get_model(model_id)
            model.update(fields)
            write_json_atomic(model_dir / "model.json", model)
        return model

    # --------------------------------------------------------------- versions
    def _version_numbers(self, model_id: str) -> list[int]:
        versions_dir = self._versions_dir(model_id)
        if not versions_dir.is_dir():
            return []
        numbers = (version_number(entry.name) for entry in versions_dir.iterdir())
        return sorted(n for n in numbers if n is not None)

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
        versions_dir = self._versions_dir(model_id)
        versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = versions_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            if patch_file is not None:
                doc["patch"] = copy_patch(Path(patch_file), tmp / PATCH_FILE, doc["patch"])
            elif doc["patch"] is not None:
                raise InvalidDocument("manifest describes a patch but no patch file was given")
            numbers = self._version_numbers(model_id)
            number = numbers[-1] + 1 if numbers else 0
            for _ in range(_MAX_PUBLISH_ATTEMPTS):
                doc["id"] = f"v{number}"
                write_json_atomic(tmp / MANIFEST_FILE, doc)
                try:
                    os.rename(tmp, versions_dir / doc["id"])
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    number += 1
                    continue
                fsync_dir(versions_dir)
                return doc
            raise Conflict(f"no free version number for model {model_id}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def get_version(self, model_id: str, version: str) -> dict[str, Any]:
        """A version's manifest; NotFound for an unknown model or version."""
        self.get_model(model_id)
        path = self._version_dir(model_id, version) / MANIFEST_FILE
        missing = NotFound(f"version {version!r} of model {model_id} not found", kind="version")
        return self._read(path, missing)

    def list_versions(self, model_id: str) -> list[dict[str, Any]]:
        """All published versions of a model, v0 first (never the .tmp-* leftovers)."""
        self.get_model(model_id)
        return [self.get_version(model_id, f"v{n}") for n in self._version_numbers(model_id)]

    def patch_path(self, model_id: str, version: str) -> Path:
        """Path of a version's patch file; NotFound when the version has none (v0)."""
        manifest = self.get_version(model_id, version)
        if manifest.get("patch") is None:
            raise NotFound(f"version {version} of model {model_id} has no patch", kind="patch")
        return self._version_dir(model_id, version) / PATCH_FILE

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
        path = self._job_path(job["id"])
        with locked(self._job_lock(job["id"])):
            if path.exists():
                raise Conflict(f"job {job['id']} already exists")
            write_json_atomic(path, job)
        return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job document; NotFound when there is none."""
        return self._read(self._job_path(job_id), NotFound(f"job {job_id!r} not found", kind="job"))

    def list_jobs(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """All job documents (of one model when given), oldest first."""
        base = self.root / "jobs"
        if not base.is_dir():
            return []
        jobs = []
        for entry in base.glob("j-*.json"):
            with contextlib.suppress(NotFound):
                job = self.get_job(entry.name[: -len(".json")])
                if model_id is None or job.get("model_id") == model_id:
                    jobs.append(job)
        return sorted(jobs, key=lambda j: (j.get("created_at") or "", j["id"]))

    def update_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Locked read-modify-write of a job (progress, result...); returns the new document.

        Status changes belong in transition_job, which checks where the job stands.
        """
        if "id" in fields:
            raise InvalidDocument("a job's id cannot change")
        if "status" in fields:
            check_job_status(fields["status"])
        path = self._job_path(job_id)
        self.get_job(job_id)  # NotFound before any lock file is made
        with locked(self._job_lock(job_id)):
            job = self.get_job(job_id)
            job.update(fields)
            write_json_atomic(path, job)
        return job

    def transition_job(
        self, job_id: str, allowed_from: Iterable[str], to: str, **fields: Any
    ) -> dict[str, Any] | None:
        """Move a job to `to` if its status is in allowed_from; None (no write) otherwise.

        Holds the job's lock, so of two racing transitions from "queued" (cancel and
        start) exactly one returns a document. Sets started_at on "running" and
        finished_at on a terminal status unless given.
        """
        check_job_status(to)
        allowed = set(allowed_from)
        for status in allowed:
            check_job_status(status)
        if "id" in fields or "status" in fields:
            raise InvalidDocument("transition_job sets the status itself; the id cannot change")
        path = self._job_path(job_id)
        self.get_job(job_id)
        with locked(self._job_lock(job_id)):
            job = self.get_job(job_id)
            if job.get("status") not in allowed:
                return None
            now = utc_now()
            job["status"] = to
            if to == "running" and "started_at" not in fields:
                job["started_at"] = now
            if to in TERMINAL_JOB_STATUSES and "finished_at" not in fields:
                job["finished_at"] = now
            job.update(fields)
            write_json_atomic(path, job)
        return job
