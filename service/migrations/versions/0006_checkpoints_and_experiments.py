"""Resume instead of restart: each running job's last checkpoint; and experiments, searches over a request's
fields whose trials are jobs.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("study_name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("trials_asked", sa.Integer(), nullable=False),
        sa.Column("best_job_id", sa.String(32), nullable=True),
        sa.Column("published_model_id", sa.String(32), nullable=True),
        sa.Column("advancing_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wakeups", sa.Integer(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
        sa.Column("request_sha256", sa.String(64), nullable=True),
    )
    op.create_index("ix_experiments_status", "experiments", ["status"])
    op.create_index("ix_experiments_created_at", "experiments", ["created_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("checkpoint", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("experiment_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("trial_params", sa.JSON(), nullable=True))
        batch.create_index("ix_jobs_experiment_id", ["experiment_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_experiment_id")
        for column in ("trial_params", "trial_number", "experiment_id", "checkpoint"):
            batch.drop_column(column)
    op.drop_table("experiments")
