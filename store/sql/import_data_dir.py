"""Copy the metadata of a data directory written before metadata moved to SQL (the
JSON documents of the old layout, store.sql.legacy; local directories only) into a
database, then verify the audit chain.

    python -m cli.admin import-data-dir --data-dir D [--url U]
    python -m store.sql.import_data_dir --data-dir D [--url U]     (the same)

U defaults to ZEROUNLEARN_DATABASE_URL, else SQLite in D. The database is migrated
first. Idempotent: a row that is already there is left as it is (counted "present"), so
a second run changes nothing; an audit entry already there must have the same hash. The
source chain is verified before anything is written and the database's after.

What is copied: models, version manifests (each patch file is copied to its
content-addressed blob, models/{id}/patches/{sha256}.safetensors, where the store now
reads it; the old file stays), lifecycle documents, jobs, API keys, idempotency records
(expiring IDEMPOTENCY_TTL after they were made), the audit trail with its seq numbers,
and requests, pending and settled. Request text stays sealed as it was; text an older
version stored unsealed is sealed under the request's data key on the way in. The data
keys themselves stay in the data directory (secrets/data-keys). The old documents are
left in place; once the import succeeded they are no longer read (delete them at will).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from store.audit import GENESIS, _broken, entry_hash
from store.backends import LocalBackend
from store.datakeys import MASTER_KEY, DataKeys, is_sealed
from store.errors import StoreError
from store.requests import TEXT_ARGS, _context
from store.secretfiles import load_or_create_secret
from store.sql.engine import DATABASE_URL_ENV, default_url, safe_url
from store.sql.legacy import LegacyDataDir
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
from store.versions import patch_key, size_and_sha256

log = logging.getLogger(__name__)


class ImportFailed(StoreError):
    """The data directory cannot be imported as it is (a broken audit chain, a database
    whose audit trail differs)."""


def verify_lines(lines: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check an old audit/log.jsonl as the document store did: (verdict, entries)."""
    prev, count, expected_seq = GENESIS, 0, 1
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            return _broken(count, number, "not valid JSON"), entries
        if not isinstance(entry, dict) or entry.get("seq") != expected_seq:
            return _broken(count, number, "sequence number out of order"), entries
        if entry.get("prev") != prev:
            return _broken(count, number, "prev does not match the previous entry's hash"), \
                entries
        if entry.get("hash") != entry_hash(entry):
            return _broken(count, number, "hash does not match the entry's content"), entries
        prev, count, expected_seq = entry["hash"], count + 1, expected_seq + 1
        entries.append(entry)
    return {"valid": True, "entries": count, "head": prev, "broken_at": None,
            "reason": None}, entries


def _expires(created_at: str | None) -> datetime:
    try:
        made = datetime.fromisoformat(str(created_at).replace("Z", "+00:00"))
        return made.replace(tzinfo=None) + IDEMPOTENCY_TTL  # the column is naive UTC
    except ValueError:
        # unreadable: a full lease of life from now
        return datetime.now(UTC).replace(tzinfo=None) + IDEMPOTENCY_TTL


class Importer:
    """One import of the old documents under `source` into `meta`'s database."""

    def __init__(self, source: LegacyDataDir, meta: SqlMetadata, blobs: LocalBackend,
                 data_keys: DataKeys) -> None:
        self.source = source
        self.meta = meta
        self.blobs = blobs
        self.data_keys = data_keys
        self.counts: dict[str, dict[str, int]] = {}

    def _put(self, what: str, table: Any, row: dict[str, Any]) -> None:
        with self.meta.db.write() as s:
            added = insert_if_absent(s, table, row)
        tally = self.counts.setdefault(what, {"added": 0, "present": 0})
        tally["added" if added else "present"] += 1

    def run(self) -> dict[str, Any]:
        source, entries = verify_lines(self.source.audit_lines())
        if not source["valid"]:
            raise ImportFailed(f"the data directory's audit chain is broken at entry "
                               f"{source['broken_at']}: {source['reason']}")
        self.models()
        self.jobs()
        for doc in self.source.keys():
            self._put("api_keys", ApiKey, key_row(doc))
        self.idempotency()
        self.audit(entries)
        self.requests()
        result = self.meta.audit.verify()
        if not result["valid"]:
            raise ImportFailed(f"the imported audit chain does not verify at entry "
                               f"{result['broken_at']}: {result['reason']}")
        if result["head"] != (source["head"] if source["entries"] else GENESIS):
            raise ImportFailed("the database's audit trail goes on past the data directory's")
        return {"counts": self.counts, "audit": result}

    def models(self) -> None:
        for model in self.source.models():
            self._put("models", Model, model_row(model))
            for manifest, patch_file in self.source.versions(model["id"]):
                self._patch(model["id"], manifest, patch_file)
                self._put("versions", Version, version_row(model["id"], manifest))
            lifecycle = self.source.lifecycle(model["id"])
            if lifecycle is not None:
                self._put("lifecycle", Lifecycle, {
                    "model_id": model["id"], "updated_at": model.get("created_at") or "",
                    "doc": lifecycle})

    def _patch(self, model_id: str, manifest: dict[str, Any], patch_file: Path | None) -> None:
        """Copy an old version's patch file to its content-addressed blob (once)."""
        sha256 = (manifest.get("patch") or {}).get("sha256")
        if patch_file is None or not sha256:
            return
        key = patch_key(model_id, sha256)
        if self.blobs.exists(key):
            return
        if size_and_sha256(patch_file)[1] != sha256:
            raise ImportFailed(f"the patch of {model_id}/{manifest.get('id')} does not match "
                               "its manifest's sha256")
        target = self.blobs.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-import-{target.name}")
        shutil.copyfile(patch_file, tmp)
        os.replace(tmp, target)

    def jobs(self) -> None:
        for job in self.source.jobs():
            self._put("jobs", Job, job_row(job, job.get("finished_at")
                                           or job.get("created_at")))

    def idempotency(self) -> None:
        for key_hash, doc in self.source.idempotency():
            self._put("idempotency", Idempotency, {
                "key_hash": key_hash, "job_id": doc["job_id"], "body_hash": doc["body_hash"],
                "created_at": doc.get("created_at") or "",
                "expires_at": _expires(doc.get("created_at"))})

    def audit(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            self._put("audit", AuditEntry,
                      {"seq": entry.get("seq"), "hash": entry.get("hash"), "entry": entry})
            stored = self.meta.audit.entry(int(entry["seq"]))
            if stored is None or stored.get("hash") != entry.get("hash"):
                raise ImportFailed(f"audit entry {entry.get('seq')} in the database differs "
                                   "from the data directory's")

    def requests(self) -> None:
        for settled, doc in self.source.requests():
            self._put("requests", Request, request_row(self._sealed(doc), settled))

    def _sealed(self, doc: dict[str, Any]) -> dict[str, Any]:
        args = doc.get("task_args")
        if not isinstance(args, list):
            return doc
        args = list(args)
        for index in TEXT_ARGS.get(str(doc.get("kind")), ()):
            if index < len(args) and not is_sealed(args[index]):
                args[index] = self.data_keys.seal(doc["job_id"], _context(index), args[index])
        return {**doc, "task_args": args}


def import_data_dir(data_dir: Path | str, url: str | None = None) -> dict[str, Any]:
    """Migrate the database at `url` (default: SQLite in data_dir) and import data_dir's
    metadata into it; returns {"url", "counts", "audit"}. ImportFailed: nothing wrong
    was written past the audit entry named."""
    url = url or default_url(data_dir)
    upgrade(url)
    blobs = LocalBackend(data_dir)
    data_keys = DataKeys(blobs, lambda: load_or_create_secret(blobs, MASTER_KEY))
    meta = SqlMetadata(url, data_keys)
    try:
        summary = Importer(LegacyDataDir(data_dir), meta, blobs, data_keys).run()
    finally:
        meta.close()
    return {"url": safe_url(url), **summary}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store.sql.import_data_dir",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the data directory (ZEROUNLEARN_DATA_DIR) to import")
    parser.add_argument("--url", default=None,
                        help=f"the database (default: {DATABASE_URL_ENV} or its _FILE, else "
                             "SQLite in the data directory)")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} is not a directory")
    from store.settings import DatabaseSettings, SettingsError

    try:
        configured = None if args.url else DatabaseSettings.load().database_url
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        summary = import_data_dir(args.data_dir, args.url or configured)
    except StoreError as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
