"""The worker's backstop for sealed and deleted versions.

The API refuses a sealed version unless an admin overrides (app.version_guard). A job
accepted before its version was sealed (a forget with an explicit base_version, an
export, a verify, a compaction waiting in the queue while another forget succeeded) is
checked again when it runs: a version that was not sealed when the job was accepted
(so nobody had to override) but is sealed now refuses it with `version_sealed`. A job
accepted on an already sealed version went through an admin's override at the door. A
deleted version refuses with `version_deleted`.
"""

from __future__ import annotations

from typing import Any

from store import ArtifactStore
from store.lifecycle import version_entry
from worker.errors import WorkerError


class VersionSealed(WorkerError):
    """The version was sealed after the job was accepted (no override covers it)."""

    code = "version_sealed"


class VersionDeleted(WorkerError):
    """The version's files were deleted (DELETE on the version)."""

    code = "version_deleted"


def check_job_version(
    store: ArtifactStore, job: dict[str, Any], model_id: str, version: str
) -> None:
    """VersionDeleted / VersionSealed unless the job may still use `version`."""
    entry = version_entry(store.lifecycle.read(model_id), version)
    if entry["deleted"]:
        raise VersionDeleted(f"version {version} of model {model_id} was deleted")
    accepted = str(job.get("created_at") or "")
    seals = entry["sealed_by"]
    if seals and min(str(s.get("at") or "") for s in seals) >= accepted:
        jobs = sorted({j for s in seals for j in s.get("jobs", [])})
        raise VersionSealed(
            f"version {version} of model {model_id} was sealed by forget request(s) "
            f"{', '.join(jobs)} after this job was accepted; submit it again (an admin "
            "may override the seal)"
        )
