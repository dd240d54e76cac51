"""Jobs logged as MLflow runs and published models registered in MLflow's registry, against a real
``mlflow server`` on SQLite started here, read back with ``MlflowClient``."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from service import jobs
from service.db import session_scope
from service.embedded import free_port, stop_process
from service.settings import Settings
from service.spec import TrainRequest
from tests.conftest import WorkerProcess, chapter_request, running_worker, wait_for_job

pytestmark = pytest.mark.slow

NAME = "digits mlflow"


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on SQLite with artifacts in a directory, as the README's example runs it."""
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"),
        *("--default-artifact-root", (home / "artifacts").as_uri()),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    with (home / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (home / "server.log").read_text()
            assert time.monotonic() < deadline, (home / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def mlflow_settings(settings: Settings, mlflow_url: str) -> Settings:
    """The session's database and store, a queue of its own, and MLflow."""
    return settings.model_copy(
        update={"mlflow_tracking_uri": mlflow_url, "mlflow_timeout": 20.0, "queue": f"{settings.queue}-mlflow"}
    )


@pytest.fixture(scope="module")
def mlflow_worker(mlflow_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with running_worker(mlflow_settings, tmp_path_factory.mktemp("mlflow-worker") / "worker.log") as process:
        yield process


@pytest.fixture(scope="module")
def api(mlflow_settings: Settings, mlflow_worker: WorkerProcess) -> Iterator[TestClient]:
    from service.api.app import create_app

    with TestClient(create_app(mlflow_settings)) as client:
        yield client


def submit(api: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/train", json=body)
    assert response.status_code == 202, response.text
    return wait_for_job(api, response.json()["job_id"])


def wait_for(read: Any, timeout: float = 60) -> Any:
    """What ``read()`` answers once it answers something: the worker writes to MLflow in the background."""
    deadline = time.monotonic() + timeout
    while not (found := read()):
        assert time.monotonic() < deadline, "MLflow did not get it in time"
        time.sleep(0.3)
    return found


def test_a_job_is_a_run_and_its_model_a_registered_version(
    api: TestClient, mlflow_url: str, tmp_path: Path, settings: Settings
) -> None:
    body = {**chapter_request(epochs=3), "name": NAME}
    body["fit"]["validation_split"] = 0.2
    job = submit(api, body)
    assert job["status"] == "succeeded", job["error"]
    mlflow = MlflowClient(mlflow_url)
    model = wait_for(lambda: (m := api.get(f"/models/{job['model_id']}").json())["mlflow"] and m)
    job = api.get(f"/jobs/{job['job_id']}").json()
    assert job["mlflow"]["error"] is None
    run = mlflow.get_run(job["mlflow"]["run_id"])

    assert run.info.status == "FINISHED"
    assert run.info.run_name == NAME
    assert run.data.tags["trainserve.job_id"] == job["job_id"]
    assert run.data.tags["trainserve.model_id"] == job["model_id"]
    assert mlflow.get_experiment(run.info.experiment_id).name == "TrainServe"
    params = run.data.params
    assert params["model.layers.1.units"] == "100"
    assert params["model.layers.1.activation"] == "relu"
    assert params["compile.optimizer.type"] == "adam"
    assert params["compile.optimizer.learning_rate"] == "0.001"
    assert params["compile.metrics"] == '["accuracy"]'
    assert params["model.layers.1.use_bias"] == "true"
    assert params["dataset.name"] == "digits"
    assert params["fit.epochs"] == "3"
    assert params["model.input_shape"] == "[8, 8]"

    # Every epoch's loss, metrics, val_* and learning rate at step = epoch, as the job's history has them.
    names = {name for row in job["history"] for name in row} - {"epoch"}
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= names
    for name in names:
        history = mlflow.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2, 3], name
        np.testing.assert_allclose([m.value for m in history], [row[name] for row in job["history"]], rtol=1e-6)
    for name, value in job["evaluation"].items():
        assert run.data.metrics[f"evaluation_{name}"] == pytest.approx(value, rel=1e-6)

    # The .keras file, the very one the service stores.
    artifacts = [a.path for a in mlflow.list_artifacts(run.info.run_id, "model")]
    assert artifacts == [f"model/{job['model_id']}.keras"]
    local = mlflow.download_artifacts(run.info.run_id, artifacts[0], str(tmp_path))
    assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == model["sha256"]

    # The published model, registered under its name.
    assert model["mlflow"]["name"] == NAME
    version = mlflow.get_model_version(NAME, model["mlflow"]["version"])
    assert version.run_id == run.info.run_id
    assert version.source == f"runs:/{run.info.run_id}/model"
    assert version.tags == {"trainserve.model_id": job["model_id"], "trainserve.version": str(model["version"])}

    # The next model of the name is the registered model's next version.
    again = submit(api, {**chapter_request(epochs=1), "name": NAME})
    assert again["status"] == "succeeded", again["error"]
    second = wait_for(lambda: (m := api.get(f"/models/{again['model_id']}").json())["mlflow"] and m)
    assert int(second["mlflow"]["version"]) == int(model["mlflow"]["version"]) + 1
    assert mlflow.get_registered_model(NAME).latest_versions[-1].version == second["mlflow"]["version"]


def test_a_resumed_job_goes_on_in_its_run(mlflow_settings: Settings, mlflow_url: str) -> None:
    """An attempt that resumes a job after epoch 3 logs into the run its record names (no second run), and sends
    the epochs up to its checkpoint that the run lacks (the first attempt died before sending the third)."""
    from worker.mlflow_log import MlflowRun

    body = chapter_request(epochs=5)
    with session_scope(mlflow_settings.database_url) as session:
        job_id = jobs.create_job(session=session, request=TrainRequest.model_validate(body)).id
    history = [{"loss": 2.0 - epoch / 10, "accuracy": epoch / 10} for epoch in range(1, 6)]

    first = MlflowRun(mlflow_settings, job_id=job_id, run_name="resumed", spec=body, record=None, tags={"a": "1"})
    for epoch in (1, 2):
        first.epoch(epoch, history[epoch - 1])
    first.close(30)
    with session_scope(mlflow_settings.database_url) as session:
        row = jobs.get_job(session=session, job_id=job_id)
        assert row is not None
        record = row.mlflow
    assert record is not None
    assert record["run_id"]

    second = MlflowRun(mlflow_settings, job_id=job_id, run_name="resumed", spec=body, record=record, tags={"a": "1"})
    second.resume(history[:3])
    for epoch in (4, 5):
        second.epoch(epoch, history[epoch - 1])
    second.finish("FINISHED")
    second.close(30)

    mlflow = MlflowClient(mlflow_url)
    assert sorted(m.step for m in mlflow.get_metric_history(record["run_id"], "loss")) == [1, 2, 3, 4, 5]
    accuracy = sorted((m.step, m.value) for m in mlflow.get_metric_history(record["run_id"], "accuracy"))
    assert accuracy == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.5)]
    assert mlflow.get_run(record["run_id"]).info.status == "FINISHED"
    experiment = mlflow.get_experiment_by_name("TrainServe")
    assert experiment is not None
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="tags.a = '1'")
    assert [r.info.run_id for r in runs] == [record["run_id"]]


def test_mlflow_down_never_fails_the_job(api: TestClient, mlflow_settings: Settings) -> None:
    """A tracking server that does not answer: handing MLflow an epoch never waits for it, and the job's record
    says what MLflow could not take (the run it could not start)."""
    down = mlflow_settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    from worker.mlflow_log import MlflowRun

    with session_scope(down.database_url) as session:
        job_id = jobs.create_job(session=session, request=TrainRequest.model_validate(chapter_request())).id
    started = time.monotonic()
    run = MlflowRun(down, job_id=job_id, run_name="down", spec={}, record=None, tags={})
    run.epoch(1, {"loss": 1.0})
    queued = time.monotonic() - started
    run.finish("FINISHED")
    run.close(60)
    assert queued < 0.5, "logging waited for MLflow"
    job = api.get(f"/jobs/{job_id}").json()
    assert "MLflow: could not start the run" in job["mlflow"]["error"]
    assert job["mlflow"]["run_id"] is None
