"""Document rules: ids, statuses, timestamps and manifest checks (no I/O but the patch copy)."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from store.enums import JOB_STATUSES, MODEL_STATUSES
from store.errors import InvalidDocument
from store.files import copy_file_synced

MODEL_ID_RE = re.compile(r"^m-[0-9a-f]{12}$")
JOB_ID_RE = re.compile(r"^j-[0-9a-f]{16}$")
VERSION_RE = re.compile(r"^v(0|[1-9][0-9]{0,8})$")
"""Version ids: v0 .. v999999999 (a longer id names no version: 404, never a file name
too long for the store)."""
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def utc_now() -> str:
    """Current time as ISO-8601 UTC with milliseconds, e.g. 2025-01-31T12:00:00.000Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_model_id() -> str:
    """A fresh model id: "m-" and 12 hex digits."""
    return f"m-{secrets.token_hex(6)}"


def new_job_id() -> str:
    """A fresh job id: "j-" and 16 hex digits."""
    return f"j-{secrets.token_hex(8)}"


def version_number(name: str) -> int | None:
    """The N of "vN"; None for anything else (".tmp-*" leftovers included)."""
    match = VERSION_RE.match(name)
    return int(match.group(1)) if match else None


def check_model_status(status: Any) -> None:
    """InvalidDocument unless status is one of MODEL_STATUSES."""
    if status not in MODEL_STATUSES:
        raise InvalidDocument(f"model status must be one of {', '.join(MODEL_STATUSES)}")


def check_job_status(status: Any) -> None:
    """InvalidDocument unless status is one of JOB_STATUSES."""
    if status not in JOB_STATUSES:
        raise InvalidDocument(f"job status must be one of {', '.join(JOB_STATUSES)}")


def manifest_defaults(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest with every field present; refuses records that hold anything but hashes."""
    doc = {
        "parent": None,
        "created_at": utc_now(),
        "method": None,
        "hparams": {},
        "job_id": None,
        "records": [],
        "patch": None,
        "metrics": {},
        **{k: v for k, v in manifest.items() if k not in ("id", "active")},
    }
    if not isinstance(doc["records"], list):
        raise InvalidDocument("manifest records must be a list of {'sha256'}")
    for i, rec in enumerate(doc["records"]):
        if not isinstance(rec, dict) or set(rec) != {"sha256"}:
            raise InvalidDocument(f"manifest records[{i}] must hold only a 'sha256' (no text)")
        if not isinstance(rec["sha256"], str) or not SHA256_RE.match(rec["sha256"]):
            raise InvalidDocument(f"manifest records[{i}].sha256 is not a sha256 hex digest")
    if doc["parent"] is not None and not (
        isinstance(doc["parent"], str) and VERSION_RE.match(doc["parent"])
    ):
        raise InvalidDocument("manifest parent must be a version id like 'v0' or null")
    return doc


def copy_patch(src: Path, dst: Path, described: dict[str, Any] | None) -> dict[str, Any]:
    """Copy the patch file in; return its manifest entry {"bytes", "sha256", "layers"}."""
    if not src.is_file():
        raise InvalidDocument(f"patch file {src.name} does not exist")
    size, sha256 = copy_file_synced(src, dst)
    described = dict(described or {})
    if described.get("sha256") not in (None, sha256):
        raise InvalidDocument("patch sha256 in the manifest does not match the patch file")
    return {**described, "bytes": size, "sha256": sha256, "layers": described.get("layers", [])}
