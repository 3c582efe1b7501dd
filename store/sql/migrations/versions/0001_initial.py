"""The first schema: models, versions, jobs, api_keys, idempotency, audit, requests,
lifecycle (store.sql.schema).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(32)
TIME = sa.String(32)
HASH = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", ID, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
    )
    op.create_index("ix_models_created_at_id", "models", ["created_at", "id"])
    op.create_table(
        "versions",
        sa.Column("model_id", ID, nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("patch_sha256", HASH, nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"],
                                name="fk_versions_model_id_models"),
        sa.PrimaryKeyConstraint("model_id", "number", name="pk_versions"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", ID, nullable=False),
        sa.Column("model_id", ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_model_id_created_at", "jobs", ["model_id", "created_at"])
    op.create_index("ix_jobs_kind", "jobs", ["kind"])
    op.create_index("ix_jobs_created_at_id", "jobs", ["created_at", "id"])
    op.create_table(
        "api_keys",
        sa.Column("id", ID, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("sha256", HASH, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.Column("bootstrap", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("sha256", name="uq_api_keys_sha256"),
    )
    op.create_index("ix_api_keys_role_revoked_at", "api_keys", ["role", "revoked_at"])
    op.create_table(
        "idempotency",
        sa.Column("key_hash", HASH, nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("body_hash", HASH, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name="pk_idempotency"),
    )
    op.create_index("ix_idempotency_expires_at", "idempotency", ["expires_at"])
    op.create_table(
        "audit",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(),
                  nullable=False),
        sa.Column("hash", HASH, nullable=False),
        sa.Column("entry", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit"),
    )
    op.create_table(
        "requests",
        sa.Column("job_id", ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=True),
        sa.Column("model_id", ID, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("purged_at", TIME, nullable=True),
        sa.Column("callback_state", sa.String(16), nullable=True),
        sa.Column("callback_next_attempt_at", sa.Float(), nullable=True),
        sa.Column("task_args", sa.JSON(), nullable=True),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_requests"),
    )
    op.create_index("ix_requests_settled_created_at", "requests", ["settled", "created_at"])
    op.create_index("ix_requests_callback_state_callback_next_attempt_at", "requests",
                    ["callback_state", "callback_next_attempt_at"])
    op.create_table(
        "lifecycle",
        sa.Column("model_id", ID, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"],
                                name="fk_lifecycle_model_id_models"),
        sa.PrimaryKeyConstraint("model_id", name="pk_lifecycle"),
    )


def downgrade() -> None:
    for table in ("lifecycle", "requests", "audit", "idempotency", "api_keys", "jobs",
                  "versions", "models"):
        op.drop_table(table)
