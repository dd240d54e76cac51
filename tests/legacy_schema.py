"""The database schema of the last release without migrations (service/db.py as it landed before them), as
create_all wrote it: the upgrade tests build such a database, fill it, and upgrade it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()


def _utc() -> DateTime:
    return DateTime(timezone=True)


jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200)),
    Column("status", String(16), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("created_at", _utc(), nullable=False),
    Column("started_at", _utc()),
    Column("finished_at", _utc()),
    Column("epoch", Integer, nullable=False),
    Column("epochs", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("model_id", String(32)),
    Column("error_type", String(100)),
    Column("error_message", Text),
    Column("evaluation", JSON),
    Column("worker_id", String(300)),
    Column("lease_expires_at", _utc()),
    Column("cancel_requested", Boolean, nullable=False),
    Column("dispatched_at", _utc()),
    Column("idempotency_key", String(200), unique=True),
    Column("request_sha256", String(64)),
    Index("ix_jobs_status", "status"),
    Index("ix_jobs_created_at", "created_at"),
    Index("ix_jobs_lease_expires_at", "lease_expires_at"),
)
job_epochs = Table(
    "job_epochs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("seconds", Double),
    Column("finished_at", _utc(), nullable=False),
    UniqueConstraint("job_id", "epoch"),
    Index("ix_job_epochs_job_id", "job_id"),
)
models = Table(
    "models",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("job_id", String(32), ForeignKey("jobs.id"), nullable=False, unique=True),
    Column("spec", JSON, nullable=False),
    Column("dataset", JSON, nullable=False),
    Column("input_shape", JSON, nullable=False),
    Column("class_names", JSON),
    Column("metrics", JSON, nullable=False),
    Column("evaluation", JSON),
    Column("summary", JSON, nullable=False),
    Column("keras_names", JSON, nullable=False),
    Column("path", String(500), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", _utc(), nullable=False),
    UniqueConstraint("name", "version"),
    Index("ix_models_created_at", "created_at"),
)
datasets = Table(
    "datasets",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("filename", String(500), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_key", String(64), nullable=False, unique=True),
    Column("options", JSON, nullable=False),
    Column("x_shape", JSON, nullable=False),
    Column("y_shape", JSON, nullable=False),
    Column("num_classes", Integer, nullable=False),
    Column("class_names", JSON),
    Column("class_counts", JSON, nullable=False),
    Column("splits", JSON, nullable=False),
    Column("stats", JSON, nullable=False),
    Column("path", String(500), nullable=False),
    Column("file_sha256", String(64), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", _utc(), nullable=False),
    Index("ix_datasets_sha256", "sha256"),
    Index("ix_datasets_created_at", "created_at"),
)
