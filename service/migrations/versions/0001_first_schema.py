"""The schema as it was before migrations: jobs, their epochs, models and datasets.

A database written by a version without migrations has exactly these tables, and is stamped with this revision
rather than created again.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Migrations keep their own copy of each type and constant: the application's may change after them.
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("epochs", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("model_id", sa.String(32)),
        sa.Column("error_type", sa.String(100)),
        sa.Column("error_message", sa.Text),
        sa.Column("evaluation", sa.JSON),
        sa.Column("worker_id", sa.String(300)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("dispatched_at", sa.DateTime(timezone=True)),
        sa.Column("idempotency_key", sa.String(200), unique=True),
        sa.Column("request_sha256", sa.String(64)),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_lease_expires_at", "jobs", ["lease_expires_at"])
    op.create_table(
        "job_epochs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("seconds", sa.Double),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "epoch"),
    )
    op.create_index("ix_job_epochs_job_id", "job_epochs", ["job_id"])
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, unique=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("dataset", sa.JSON, nullable=False),
        sa.Column("input_shape", sa.JSON, nullable=False),
        sa.Column("class_names", sa.JSON),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("evaluation", sa.JSON),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("keras_names", sa.JSON, nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_index("ix_models_created_at", "models", ["created_at"])
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(500), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_key", sa.String(64), nullable=False, unique=True),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("x_shape", sa.JSON, nullable=False),
        sa.Column("y_shape", sa.JSON, nullable=False),
        sa.Column("num_classes", sa.Integer, nullable=False),
        sa.Column("class_names", sa.JSON),
        sa.Column("class_counts", sa.JSON, nullable=False),
        sa.Column("splits", sa.JSON, nullable=False),
        sa.Column("stats", sa.JSON, nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_datasets_sha256", "datasets", ["sha256"])
    op.create_index("ix_datasets_created_at", "datasets", ["created_at"])


def downgrade() -> None:
    for table in ("datasets", "models", "job_epochs", "jobs"):
        op.drop_table(table)
