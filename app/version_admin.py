"""Deleting and compacting versions: the rules, then the store or a worker job.

DELETE removes a version's files (store.retire) and keeps its manifest. Refused with 409:
v0 (`version_protected`: it is the registered base checkpoint, which stays the
operator's), the active version (`version_active`: activate another first), and a
version whose files a live version is still built from (`version_in_use`: compact that
version first, so it no longer needs them). Deleting a deleted version again is a no-op
that removes any file a crash left.

Compaction rewrites a version as one patch from v0 in a worker (torch), as a job of
kind "compact"; afterwards the versions between v0 and it can be deleted.
"""

from __future__ import annotations

import logging
from typing import Any

from app.auth import Principal
from app.errors import ConflictError
from app.queue import JobQueue
from app.services import require_ready
from app.submission import Submission, submit_job
from app.version_guard import check_usable
from store import ArtifactStore
from store.compaction import needed_by
from store.enums import JobKind
from store.retire import delete_version_files

logger = logging.getLogger(__name__)


def delete_version(
    store: ArtifactStore, who: Principal, model: dict[str, Any], version: str
) -> dict[str, Any]:
    """Delete the version's files if the rules allow; returns its manifest."""
    model_id = model["id"]
    manifest = store.get_version(model_id, version)
    if manifest.get("parent") is None:
        raise ConflictError(
            f"{version} is the registered base checkpoint of model {model_id}; it is not "
            "deleted through the service (the files under the model's source are the "
            "operator's)",
            code="version_protected",
        )
    if store.get_model(model_id)["active_version"] == version:
        raise ConflictError(
            f"version {version} is the active version of model {model_id}; activate "
            "another version first",
            code="version_active",
        )
    users = needed_by(store, model_id, version)
    if users:
        raise ConflictError(
            f"version(s) {', '.join(users)} of model {model_id} are built from the patch "
            f"of {version}; compact them first (POST .../versions/{{v}}/compact)",
            code="version_in_use",
            extra={"needed_by": users},
        )
    outcome = delete_version_files(store, who.key_id, model_id, version)
    logger.info("model %s: version %s deleted (%s)", model_id, version,
                ", ".join(outcome["removed"]) or "nothing left to remove")
    return manifest


def queue_compaction(
    store: ArtifactStore,
    queue: JobQueue,
    who: Principal,
    model: dict[str, Any],
    version: str,
    override_seal_reason: str | None,
) -> dict[str, Any]:
    """Queue a "compact" job for the version (not v0, not deleted, not sealed unless
    overridden)."""
    require_ready(model)
    manifest = store.get_version(model["id"], version)
    if manifest.get("parent") is None:
        raise ConflictError(f"{version} is the base checkpoint: it has no patch to compact",
                            code="version_protected")
    check_usable(store, who, model["id"], version, JobKind.COMPACT, override_seal_reason)
    sub = Submission(JobKind.COMPACT, model["id"], version, (model["id"], version))
    job = submit_job(store, queue, who, sub)
    logger.info("compact job %s queued: model %s, version %s", job["id"], model["id"], version)
    return job
