"""Epoch durations kept as histogram counts, so /metrics reads a dozen rows however long the history; file sizes
as 64-bit integers (a dataset may pass 2 GiB).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The histogram's upper bounds in seconds, as they were when this revision was written.
BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def upgrade() -> None:
    table = op.create_table(
        "epoch_durations",
        sa.Column("le", sa.String(16), primary_key=True),
        sa.Column("epochs", sa.BigInteger, nullable=False),
        sa.Column("seconds", sa.Double, nullable=False),
    )
    # The epochs recorded so far, each in the first bucket it fits (the last one holds the rest).
    connection = op.get_bind()
    epochs = sa.table("job_epochs", sa.column("seconds", sa.Float))
    rows = []
    lower = None
    for label, upper in [*((f"{b:g}", b) for b in BOUNDS), ("+Inf", None)]:
        query = sa.select(sa.func.count(epochs.c.seconds), sa.func.coalesce(sa.func.sum(epochs.c.seconds), 0.0))
        if lower is not None:
            query = query.where(epochs.c.seconds > lower)
        if upper is not None:
            query = query.where(epochs.c.seconds <= upper)
        count, total = connection.execute(query).one()
        rows.append({"le": label, "epochs": int(count), "seconds": float(total)})
        lower = upper
    op.bulk_insert(table, rows)
    for name in ("models", "datasets"):
        with op.batch_alter_table(name) as batch:
            batch.alter_column("size_bytes", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=False)


def downgrade() -> None:
    for name in ("models", "datasets"):
        with op.batch_alter_table(name) as batch:
            batch.alter_column("size_bytes", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=False)
    op.drop_table("epoch_durations")
