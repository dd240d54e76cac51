"""The schema is Alembic's: a new database gets exactly the tables the code declares, and a database written by the
last release without migrations is upgraded in place, its jobs, models and datasets read back through the API. On
SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text

from service.db import MIGRATIONS, VERSION_TABLE, Base, get_engine, migrate
from service.settings import Settings
from tests import legacy_schema
from tests.conftest import chapter_request

# The newest revision, as the scripts in service/migrations/versions say.
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    server: str = request.getfixturevalue("postgres_url")
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    yield make_url(server).set(database=name).render_as_string(hide_password=False)


def test_a_new_database_has_exactly_the_tables_the_code_declares(empty_database: str) -> None:
    engine = get_engine(empty_database)  # migrates
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "version_table": VERSION_TABLE})
        assert context.get_current_revision() == migrate(engine) == HEAD
        assert compare_metadata(context, Base.metadata) == []


STARTED = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
JOB_ID, MODEL_ID, DATASET_ID = "a" * 32, "b" * 32, "c" * 32


def _fill(url: str) -> None:
    """A job that trained three epochs into a model, and an upload: rows as the last release wrote them."""
    engine = create_engine(url)
    legacy_schema.metadata.create_all(engine)
    spec = chapter_request(epochs=3)
    with engine.begin() as connection:
        connection.execute(
            legacy_schema.jobs.insert(),
            [
                {
                    "id": JOB_ID,
                    "name": "digits relu + adam",
                    "status": "succeeded",
                    "spec": spec,
                    "created_at": STARTED,
                    "started_at": STARTED + timedelta(seconds=1),
                    "finished_at": STARTED + timedelta(seconds=9),
                    "epoch": 3,
                    "epochs": 3,
                    "attempts": 1,
                    "model_id": MODEL_ID,
                    "evaluation": {"accuracy": 0.95, "loss": 0.2},
                    "worker_id": "host:1",
                    "cancel_requested": False,
                    "dispatched_at": STARTED,
                    "request_sha256": "0" * 64,
                }
            ],
        )
        connection.execute(
            legacy_schema.job_epochs.insert(),
            [
                {
                    "job_id": JOB_ID,
                    "epoch": epoch,
                    "metrics": {"loss": 1 / epoch, "accuracy": 0.3 * epoch},
                    "seconds": 0.4 * epoch,
                    "finished_at": STARTED + timedelta(seconds=2 * epoch),
                }
                for epoch in (1, 2, 3)
            ],
        )
        layers = [
            {"name": "flatten", "type": "Flatten", "output_shape": [None, 64], "params": 0},
            {"name": "hidden", "type": "Dense", "output_shape": [None, 100], "params": 6500},
            {"name": "output", "type": "Dense", "output_shape": [None, 10], "params": 1010},
        ]
        connection.execute(
            legacy_schema.models.insert(),
            [
                {
                    "id": MODEL_ID,
                    "name": "digits relu + adam",
                    "version": 1,
                    "job_id": JOB_ID,
                    "spec": spec["model"],
                    "dataset": spec["dataset"],
                    "input_shape": [8, 8],
                    "class_names": None,
                    "metrics": {"loss": 0.33, "accuracy": 0.9},
                    "evaluation": {"accuracy": 0.95, "loss": 0.2},
                    "summary": {
                        "name": "digits",
                        "layers": layers,
                        "total_params": 7510,
                        "trainable_params": 7510,
                        "non_trainable_params": 0,
                        "text": "Model: digits",
                    },
                    "keras_names": {"model": "digits", "layers": ["flatten", "hidden", "output"]},
                    "path": f"{MODEL_ID}.keras",
                    "sha256": "1" * 64,
                    "size_bytes": 123_456,
                    "created_at": STARTED + timedelta(seconds=9),
                }
            ],
        )
        connection.execute(
            legacy_schema.datasets.insert(),
            [
                {
                    "id": DATASET_ID,
                    "name": "flowers",
                    "kind": "csv",
                    "filename": "flowers.csv",
                    "sha256": "2" * 64,
                    "content_key": "3" * 64,
                    "options": {"label_column": "species"},
                    "x_shape": [150, 4],
                    "y_shape": [150],
                    "num_classes": 3,
                    "class_names": ["setosa", "versicolor", "virginica"],
                    "class_counts": [50, 50, 50],
                    "splits": {"train": 150},
                    "stats": {"min": 0.1, "max": 7.9, "mean": 3.46, "std": 1.97},
                    "path": f"{DATASET_ID}.npz",
                    "file_sha256": "4" * 64,
                    "size_bytes": 3_000,
                    "created_at": STARTED,
                }
            ],
        )
    engine.dispose()


def test_a_database_of_the_last_release_is_upgraded_and_read_back(empty_database: str, tmp_path: Path) -> None:
    _fill(empty_database)
    from service.api.app import create_app

    settings = Settings(home=tmp_path / "home", database_url=empty_database, redis_url="")
    with TestClient(create_app(settings)) as client:  # its first use of the database upgrades it
        job = client.get(f"/jobs/{JOB_ID}").json()
        assert job["status"] == "succeeded"
        assert [row["epoch"] for row in job["history"]] == [1, 2, 3]
        assert job["history"][2] == {"epoch": 3, "loss": pytest.approx(1 / 3), "accuracy": pytest.approx(0.9)}
        assert job["created_at"] == "2026-11-20T09:00:00Z"
        assert job["execution"] is None  # trained before jobs recorded it
        model: dict[str, Any] = client.get(f"/models/{MODEL_ID}").json()
        assert (model["name"], model["version"], model["total_params"]) == ("digits relu + adam", 1, 7510)
        assert client.get("/models", params={"limit": 5}).json()["count"] == 1
        assert client.get(f"/models/{MODEL_ID}/summary").json()["layers"][1]["params"] == 6500
        dataset = client.get(f"/datasets/{DATASET_ID}").json()
        assert dataset["class_names"] == ["setosa", "versicolor", "virginica"]
        # The epochs recorded before the upgrade are in the duration histogram it introduced.
        metrics = client.get("/metrics").text
        assert "trainserve_epoch_duration_seconds_count 3.0" in metrics
        assert 'trainserve_epoch_duration_seconds_bucket{le="0.5"} 1.0' in metrics
    with get_engine(empty_database).connect() as connection:
        own = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert own.get_current_revision() == HEAD


def test_a_database_that_kept_its_revision_in_alembics_table_moves_it_and_shares_the_database_with_optuna(
    empty_database: str,
) -> None:
    """Databases of revisions 0001 to 0005 kept their revision in ``alembic_version``, the table Optuna's storage
    keeps its own in: the revision moves to this service's table, and then an Optuna study lives beside the
    service's tables, each reading its own revision."""
    import optuna

    engine = create_engine(empty_database)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('0001')"))
    legacy_schema.metadata.create_all(engine)
    engine.dispose()
    assert migrate(get_engine(empty_database)) == HEAD
    with get_engine(empty_database).connect() as connection:
        tables = set(connection.dialect.get_table_names(connection))
        assert "alembic_version" not in tables
        own = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert own.get_current_revision() == HEAD
    study = optuna.create_study(storage=empty_database, study_name="shared", direction="maximize")
    study.enqueue_trial({"x": 1.0})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    study.tell(trial, 0.5)
    assert optuna.load_study(study_name="shared", storage=empty_database).best_value == 0.5
    assert migrate(get_engine(empty_database)) == HEAD  # and the service still reads its own revision
