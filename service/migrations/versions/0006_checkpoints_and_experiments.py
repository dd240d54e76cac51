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

# What SQLite's unnamed unique constraints are called while its table is copied, so that one can be dropped.
_UNNAMED_UNIQUE = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


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
    # A job's model may also be published under another name (an experiment's best trial under the experiment's
    # name): one job, more than one model record.
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("models_job_id_key", "models", type_="unique")
    else:
        with op.batch_alter_table("models", naming_convention=_UNNAMED_UNIQUE, recreate="always") as batch:
            batch.drop_constraint("uq_models_job_id", type_="unique")
    op.create_index("ix_models_job_id", "models", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_models_job_id", "models")
    with op.batch_alter_table("models") as batch:
        batch.create_unique_constraint("models_job_id_key", ["job_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_experiment_id")
        for column in ("trial_params", "trial_number", "experiment_id", "checkpoint"):
            batch.drop_column(column)
    op.drop_table("experiments")
