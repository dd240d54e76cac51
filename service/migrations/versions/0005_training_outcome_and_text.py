"""How each job's training ended (the epoch early stopping stopped it at, its best epoch, which epoch's weights
were published and why training stopped), and the text encoding of text datasets and of the models trained on
them (vocabulary, length, padding), so that serving turns raw text into the same numbers.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("training", sa.JSON(), nullable=True))
    for table in ("datasets", "models"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("text", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ("models", "datasets"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("text")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("training")
