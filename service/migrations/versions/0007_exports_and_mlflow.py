"""Each model's exports made when it was published (its SavedModel archive in TensorFlow Serving's layout and its
weights file: sha256 and size, or why it has none), and where a job and its model went in MLflow (the run, the
registered model version, or the error that kept them from it).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("exports", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("mlflow", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("mlflow", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("mlflow")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("mlflow")
        batch.drop_column("exports")
