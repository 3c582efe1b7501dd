"""The metadata tables (SQLAlchemy 2 typed declarative models).

Columns that are queried (ids, status, kind, times, flags, hashes) are real columns; the
rest of each document is one JSON column, returned as the document stores returned it,
so the API's shapes do not change. Times are the documents' ISO-8601 UTC strings
("2025-01-31T12:00:00.000Z"): fixed width, so they sort as text; only the idempotency
expiry, compared with "now" in SQL, is a timestamp.

The schema is created only by the migrations (store/sql/migrations); a test checks that
the migrated database and these models do not differ.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names fixed by convention, so migrations can name what they change."""

ID = String(32)
TIME = String(32)  # ISO-8601 UTC text, as in the documents
HASH = String(64)  # sha256 hex
Doc = dict[str, Any]

# SQLite gives "INTEGER PRIMARY KEY" (exactly that type) its rowid: dense, max + 1
SEQ = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[str] = mapped_column(TIME)
    doc: Mapped[Doc] = mapped_column(JSON)
    __table_args__ = (Index(None, "created_at", "id"),)


class Version(Base):
    """An immutable version: its manifest; the patch stays a blob (sha256 + key)."""

    __tablename__ = "versions"
    model_id: Mapped[str] = mapped_column(ID, ForeignKey("models.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[str] = mapped_column(TIME)
    job_id: Mapped[str | None] = mapped_column(ID)
    patch_sha256: Mapped[str | None] = mapped_column(HASH)
    manifest: Mapped[Doc] = mapped_column(JSON)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    model_id: Mapped[str] = mapped_column(ID)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[str] = mapped_column(TIME)
    updated_at: Mapped[str] = mapped_column(TIME)
    doc: Mapped[Doc] = mapped_column(JSON)
    __table_args__ = (
        Index(None, "status"),
        Index(None, "model_id", "created_at"),
        Index(None, "kind"),
        Index(None, "created_at", "id"),  # paging in created order
    )


class ApiKey(Base):
    """An API key: only the sha256 of its secret is stored."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str] | None] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(HASH, unique=True)
    created_at: Mapped[str] = mapped_column(TIME)
    created_by: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[str | None] = mapped_column(TIME)
    bootstrap: Mapped[bool] = mapped_column(Boolean)
    __table_args__ = (Index(None, "role", "revoked_at"),)


class Idempotency(Base):
    """Which job an Idempotency-Key created; the key hash is unique (the primary key)."""

    __tablename__ = "idempotency"
    key_hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    job_id: Mapped[str] = mapped_column(ID)
    body_hash: Mapped[str] = mapped_column(HASH)
    created_at: Mapped[str] = mapped_column(TIME)
    expires_at: Mapped[datetime] = mapped_column(DateTime(), index=True)  # naive UTC


class AuditEntry(Base):
    """One entry of the hash-chained audit trail; seq comes from the database."""

    __tablename__ = "audit"
    seq: Mapped[int] = mapped_column(SEQ, Identity(), primary_key=True)
    hash: Mapped[str] = mapped_column(HASH)
    entry: Mapped[Doc] = mapped_column(JSON)


class Request(Base):
    """An accepted request: task arguments with their text sealed (store.datakeys)."""

    __tablename__ = "requests"
    job_id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str | None] = mapped_column(String(16))
    model_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[str] = mapped_column(TIME)
    settled: Mapped[bool] = mapped_column(Boolean)
    purged_at: Mapped[str | None] = mapped_column(TIME)
    callback_state: Mapped[str | None] = mapped_column(String(16))
    callback_next_attempt_at: Mapped[float | None] = mapped_column(Float)
    task_args: Mapped[list[Any] | None] = mapped_column(JSON)  # sealed text; NULL once purged
    doc: Mapped[Doc] = mapped_column(JSON)  # everything else
    __table_args__ = (
        Index(None, "settled", "created_at"),
        Index(None, "callback_state", "callback_next_attempt_at"),
    )


class Lifecycle(Base):
    """A model's version lifecycle document (store.lifecycle): seals, deletions,
    compactions, overrides. Small, per model, always read and changed whole."""

    __tablename__ = "lifecycle"
    model_id: Mapped[str] = mapped_column(ID, ForeignKey("models.id"), primary_key=True)
    updated_at: Mapped[str] = mapped_column(TIME)
    doc: Mapped[Doc] = mapped_column(JSON)


metadata = Base.metadata
__all__ = ["ApiKey", "AuditEntry", "Base", "Idempotency", "Job", "Lifecycle", "Model",
           "Request", "Version", "metadata"]
