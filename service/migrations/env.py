"""Alembic's entry point: migrations run on the connection ``service.db.migrate`` hands over (or, from Alembic's own
command line, on the database of TRAINSERVE_DATABASE_URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from service.db import VERSION_TABLE, Base, get_engine
from service.settings import get_settings


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters a table by copying it: Alembic's batch mode does that.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # Not Alembic's default name: Optuna's storage, in the same database, keeps its own revision in that one.
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with get_engine(get_settings().database_url).connect() as own:
        run(own)
