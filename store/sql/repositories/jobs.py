"""Jobs in SQL: what ArtifactStore's job methods do on documents, plus indexed listing
with filters and keyset paging (oldest first; the id breaks ties of created_at)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from store.documents import JOB_ID_RE, check_job_status, new_job_id, utc_now
from store.enums import JOB_KINDS, TERMINAL_JOB_STATUSES, JobStatus
from store.errors import Conflict, InvalidDocument, NotFound
from store.sql.engine import Database
from store.sql.repositories.common import insert_if_absent, thaw, update_document
from store.sql.schema import Job

Cursor = tuple[str, str]
"""Where a page resumes: the (created_at, id) of the last job the previous page held."""


def _missing(job_id: Any) -> NotFound:
    return NotFound(f"job {job_id!r} not found", kind="job")


def job_row(job: dict[str, Any], updated_at: str | None = None) -> dict[str, Any]:
    """The row of a job document."""
    return {"id": job["id"], "model_id": str(job.get("model_id")), "kind": job["kind"],
            "status": job["status"], "created_at": job.get("created_at") or "",
            "updated_at": updated_at or utc_now(), "doc": job}


class JobRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store a new job document (status "queued" unless given); fills id and defaults."""
        if doc.get("kind") not in JOB_KINDS:
            raise InvalidDocument(f"job kind must be one of {', '.join(JOB_KINDS)}")
        if not isinstance(doc.get("model_id"), str):
            raise InvalidDocument("job document needs a model_id")
        job = {
            "id": doc.get("id") or new_job_id(), "version": None, "status": JobStatus.QUEUED,
            "progress": {"phase": None, "fraction": 0.0}, "created_at": utc_now(),
            "started_at": None, "finished_at": None, "result": None, "error": None,
            **{k: v for k, v in doc.items() if k != "id"},
        }
        check_job_status(job["status"])
        if not isinstance(job["id"], str) or not JOB_ID_RE.match(job["id"]):
            raise InvalidDocument("a job id is 'j-' and 16 hex digits")
        with self.db.write() as s:
            if not insert_if_absent(s, Job, job_row(job)):
                raise Conflict(f"job {job['id']} already exists")
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        """The job document; NotFound when there is none."""
        with self.db.read() as s:
            doc = s.scalar(select(Job.doc).where(Job.id == str(job_id)))
        if doc is None:
            raise _missing(job_id)
        return thaw(doc)

    def list(
        self,
        model_id: str | None = None,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        after: Cursor | None = None,
        models: Collection[str] | None = None,
        descending: bool = False,
    ) -> list[dict[str, Any]]:
        """Jobs oldest first (descending: newest first), filtered by model, status,
        kind and a set of allowed models; at most `limit`, those after the cursor
        `after` (cursor_of the last job of the previous page)."""
        query = select(Job.doc)
        if model_id is not None:
            query = query.where(Job.model_id == model_id)
        if models is not None:
            query = query.where(Job.model_id.in_(sorted(models)))
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if after is not None:
            created, last_id = after
            if descending:
                query = query.where(or_(Job.created_at < created,
                                        and_(Job.created_at == created, Job.id < last_id)))
            else:
                query = query.where(or_(Job.created_at > created,
                                        and_(Job.created_at == created, Job.id > last_id)))
        if descending:
            query = query.order_by(Job.created_at.desc(), Job.id.desc())
        else:
            query = query.order_by(Job.created_at, Job.id)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as s:
            return [thaw(d) for d in s.scalars(query)]

    @staticmethod
    def cursor_of(job: dict[str, Any]) -> Cursor:
        """The cursor that resumes after `job`."""
        return (job.get("created_at") or "", job["id"])

    def stamps(self) -> dict[str, str | None]:
        """id -> "updated_at|status" of every job (a change shows as a new stamp)."""
        with self.db.read() as s:
            return {i: f"{u}|{st}" for i, u, st in s.execute(
                select(Job.id, Job.updated_at, Job.status))}

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, status) -> number of jobs: one indexed query (the metrics tally)."""
        with self.db.read() as s:
            rows = s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind,
                                                                                Job.status))
            return {(k, st): n for k, st, n in rows}

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields of a job (progress, result...) in one transaction; returns the
        new document. Status changes belong in `transition`."""
        return update_document(self.db, Job, job_id, fields, kind="job",
                               check_status=check_job_status, row=job_row)

    def transition(
        self, job_id: str, allowed_from: Iterable[str], to: str, **fields: Any
    ) -> dict[str, Any] | None:
        """Move a job to `to` if its status is in allowed_from; None (no write) otherwise.

        One transaction holding the job's row lock (SQLite: the write lock), so of two
        racing transitions from "queued" exactly one returns a document. Sets started_at
        on "running" and finished_at on a terminal status unless given.
        """
        check_job_status(to)
        allowed = set(allowed_from)
        for status in allowed:
            check_job_status(status)
        if "id" in fields or "status" in fields:
            raise InvalidDocument("transition sets the status itself; the id cannot change")
        with self.db.write() as s:
            job = self._locked(s, job_id)
            if job.get("status") not in allowed:
                return None
            now = utc_now()
            job = {**job, "status": to}
            if to == JobStatus.RUNNING and "started_at" not in fields:
                job["started_at"] = now
            if to in TERMINAL_JOB_STATUSES and "finished_at" not in fields:
                job["finished_at"] = now
            job.update(fields)
            s.execute(update(Job).where(Job.id == job_id).values(job_row(job, now)))
        return thaw(job)

    @staticmethod
    def _locked(s: Session, job_id: str) -> dict[str, Any]:
        doc = s.scalar(select(Job.doc).where(Job.id == str(job_id)).with_for_update())
        if doc is None:
            raise _missing(job_id)
        return thaw(doc)
