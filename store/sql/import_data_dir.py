"""Copy the metadata of a data directory (today's JSON documents, written by
store.ArtifactStore on the local backend) into a database, then verify the audit chain.

    python -m store.sql.import_data_dir --data-dir D [--url U]

U defaults to ZEROUNLEARN_DATABASE_URL, else SQLite in D. The database is migrated
first. Idempotent: a row that is already there is left as it is (counted "present"), so
a second run changes nothing; an audit entry already there must have the same hash. The
source chain is verified before anything is written and the database's after.

What is copied: models, version manifests (patch blobs stay where they are: the
manifest's sha256 names them), lifecycle documents, jobs, API keys, idempotency records
(expiring IDEMPOTENCY_TTL after they were made), the audit trail with its seq numbers,
and requests, pending and settled. Request text stays sealed as it was; text an older
version stored unsealed is sealed under the request's data key on the way in. The data
keys themselves stay in the data directory (secrets/data-keys).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from store.artifacts import ArtifactStore
from store.audit import GENESIS
from store.datakeys import is_sealed
from store.documents import JOB_ID_RE, SHA256_RE
from store.errors import StoreError
from store.lifecycle import lifecycle_key
from store.objects import load
from store.requests import TEXT_ARGS, _context
from store.sql.engine import DATABASE_URL_ENV, default_url, safe_url
from store.sql.metadata import SqlMetadata
from store.sql.migrate import upgrade
from store.sql.repositories.common import insert_if_absent
from store.sql.repositories.idempotency import IDEMPOTENCY_TTL
from store.sql.repositories.jobs import job_row
from store.sql.repositories.keys import key_row
from store.sql.repositories.models import model_row, version_row
from store.sql.repositories.requests import request_row
from store.sql.schema import (
    ApiKey,
    AuditEntry,
    Idempotency,
    Job,
    Lifecycle,
    Model,
    Request,
    Version,
)

log = logging.getLogger(__name__)


class ImportFailed(StoreError):
    """The data directory cannot be imported as it is (a broken audit chain, a database
    whose audit trail differs)."""


def _docs(store: ArtifactStore, prefix: str, pattern: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in store.backend.children(prefix):
        stem = name[: -len(".json")] if name.endswith(".json") else None
        if stem is None or not pattern.match(stem):
            continue
        blob = store.backend.read(prefix + name)
        if blob is not None:
            yield stem, load(blob.data, name)


def _expires(created_at: str | None) -> datetime:
    try:
        made = datetime.fromisoformat(str(created_at).replace("Z", "+00:00"))
        return made.replace(tzinfo=None) + IDEMPOTENCY_TTL  # the column is naive UTC
    except ValueError:
        # unreadable: a full lease of life from now
        return datetime.now(UTC).replace(tzinfo=None) + IDEMPOTENCY_TTL


class Importer:
    """One import of `store`'s documents into `meta`'s database."""

    def __init__(self, store: ArtifactStore, meta: SqlMetadata) -> None:
        self.store = store
        self.meta = meta
        self.counts: dict[str, dict[str, int]] = {}

    def _put(self, what: str, table: Any, row: dict[str, Any]) -> None:
        with self.meta.db.write() as s:
            added = insert_if_absent(s, table, row)
        tally = self.counts.setdefault(what, {"added": 0, "present": 0})
        tally["added" if added else "present"] += 1

    def run(self) -> dict[str, Any]:
        source = self.store.audit.verify()
        if not source["valid"]:
            raise ImportFailed(f"the data directory's audit chain is broken at entry "
                               f"{source['broken_at']}: {source['reason']}")
        self.models()
        self.jobs()
        for doc in self.store.keys.list():
            self._put("api_keys", ApiKey, key_row(doc))
        self.idempotency()
        self.audit()
        self.requests()
        result = self.meta.audit.verify()
        if not result["valid"]:
            raise ImportFailed(f"the imported audit chain does not verify at entry "
                               f"{result['broken_at']}: {result['reason']}")
        if result["head"] != (source["head"] if source["entries"] else GENESIS):
            raise ImportFailed("the database's audit trail goes on past the data directory's")
        return {"counts": self.counts, "audit": result}

    def models(self) -> None:
        for model in self.store.list_models():
            self._put("models", Model, model_row(model))
            for manifest in self.store.list_versions(model["id"]):
                self._put("versions", Version, version_row(model["id"], manifest))
            if self.store.backend.exists(lifecycle_key(model["id"])):
                self._put("lifecycle", Lifecycle, {
                    "model_id": model["id"], "updated_at": model.get("created_at") or "",
                    "doc": self.store.lifecycle.read(model["id"])})

    def jobs(self) -> None:
        for job in self.store.list_jobs():
            self._put("jobs", Job, job_row(job, job.get("finished_at")
                                                     or job.get("created_at")))

    def idempotency(self) -> None:
        for key_hash, doc in _docs(self.store, "idempotency/", SHA256_RE):
            self._put("idempotency", Idempotency, {
                "key_hash": key_hash, "job_id": doc["job_id"], "body_hash": doc["body_hash"],
                "created_at": doc.get("created_at") or "",
                "expires_at": _expires(doc.get("created_at"))})

    def audit(self) -> None:
        for entry in self.store.audit.entries():
            self._put("audit", AuditEntry,
                      {"seq": entry.get("seq"), "hash": entry.get("hash"), "entry": entry})
            stored = self.meta.audit.entry(int(entry["seq"]))
            if stored is None or stored.get("hash") != entry.get("hash"):
                raise ImportFailed(f"audit entry {entry.get('seq')} in the database differs "
                                   "from the data directory's")

    def requests(self) -> None:
        for settled, prefix in ((False, "requests/"), (True, "requests/settled/")):
            for _, doc in _docs(self.store, prefix, JOB_ID_RE):
                self._put("requests", Request, request_row(self._sealed(doc),
                                                                      settled))

    def _sealed(self, doc: dict[str, Any]) -> dict[str, Any]:
        args = doc.get("task_args")
        if not isinstance(args, list):
            return doc
        args = list(args)
        for index in TEXT_ARGS.get(str(doc.get("kind")), ()):
            if index < len(args) and not is_sealed(args[index]):
                args[index] = self.store.data_keys.seal(doc["job_id"], _context(index),
                                                        args[index])
        return {**doc, "task_args": args}


def import_data_dir(data_dir: Path | str, url: str | None = None) -> dict[str, Any]:
    """Migrate the database at `url` (default: SQLite in data_dir) and import data_dir's
    metadata into it; returns {"url", "counts", "audit"}. ImportFailed: nothing wrong
    was written past the audit entry named."""
    url = url or default_url(data_dir)
    upgrade(url)
    store = ArtifactStore(data_dir)
    meta = SqlMetadata(url, store.data_keys)
    try:
        summary = Importer(store, meta).run()
    finally:
        meta.close()
    return {"url": safe_url(url), **summary}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store.sql.import_data_dir",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the data directory (ZEROUNLEARN_DATA_DIR) to import")
    parser.add_argument("--url", default=os.environ.get(DATABASE_URL_ENV),
                        help=f"the database (env {DATABASE_URL_ENV}; default: SQLite in "
                             "the data directory)")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} is not a directory")
    try:
        summary = import_data_dir(args.data_dir, args.url)
    except StoreError as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
