"""Every job's TensorBoard logs: downloaded as a tar and read back with TensorBoard's own reader
(``EventAccumulator``), equal epoch by epoch to the job's history; and ``trainserve tensorboard`` serving them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from service import jobs
from service.db import session_scope
from service.embedded import free_port
from service.settings import Settings
from service.spec import TrainRequest
from service.tensorboard import TENSORBOARD, command_line
from tests.conftest import chapter_request, settings_env, train

pytestmark = pytest.mark.slow

Scalars = dict[tuple[str, str], list[tuple[int, float]]]


def read_logs(client: TestClient, job_id: str, into: Path) -> tuple[Scalars, dict[str, list[int]]]:
    """The job's logs from GET /jobs/{id}/tensorboard, read by TensorBoard's reader: each (run, tag)'s scalars as
    (step, value) in the order TensorBoard has them, and each histogram tag's steps."""
    response = client.get(f"/jobs/{job_id}/tensorboard")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:") as tar:
        assert {Path(name).parts[0] for name in tar.getnames()} == {job_id}
        tar.extractall(into, filter="data")
    scalars: Scalars = {}
    histograms: dict[str, list[int]] = defaultdict(list)
    for run in ("train", "validation"):
        if not (into / job_id / run).is_dir():
            continue
        reader = EventAccumulator(str(into / job_id / run), size_guidance={"tensors": 0})
        reader.Reload()
        for tag in reader.Tags()["tensors"]:
            events = reader.Tensors(tag)
            if tag.endswith("/histogram"):
                histograms[tag] = [event.step for event in events]
                buckets = tf.make_ndarray(events[0].tensor_proto)
                assert buckets.shape == (30, 3)
                continue
            scalars[(run, tag)] = [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in events]
    return scalars, histograms


def assert_logs_are_the_history(scalars: Scalars, history: list[dict[str, Any]]) -> None:
    """Every epoch once, at step epoch - 1, each value the job's (float32, as Keras logs them)."""
    expected: Scalars = defaultdict(list)
    for row in history:
        for name, value in row.items():
            if name == "epoch" or value is None:
                continue
            run, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            expected[(run, f"epoch_{tag}")].append((row["epoch"] - 1, float(np.float32(value))))
    assert set(scalars) == set(expected)
    for key, points in expected.items():
        got = scalars[key]
        assert [step for step, _ in got] == [step for step, _ in points], key
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=1e-6, err_msg=str(key))


def test_every_epoch_is_logged_as_the_history_says_with_histograms_when_asked(
    client: TestClient, tmp_path: Path
) -> None:
    body = chapter_request(epochs=4)
    body["fit"]["validation_split"] = 0.2
    body["fit"]["tensorboard"] = {"histogram_freq": 2}
    schedule = {"type": "exponential_decay", "initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}
    body["compile"]["optimizer"] = {"type": "sgd", "learning_rate": schedule}
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    scalars, histograms = read_logs(client, job["job_id"], tmp_path)
    assert_logs_are_the_history(scalars, job["history"])
    assert {("train", "epoch_loss"), ("validation", "epoch_loss"), ("train", "epoch_learning_rate")} <= set(scalars)
    rates = [value for _, value in scalars[("train", "epoch_learning_rate")]]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] < 0.1  # the schedule's rate at each epoch's end
    # Weights every second epoch (0 and 2, as histogram_freq=2 counts from the first), one tag per variable.
    assert set(histograms) == {
        f"{model}/{layer}/{variable}/histogram"
        for model in {tag.split("/")[0] for tag in histograms}
        for layer in ("hidden", "output")
        for variable in ("kernel", "bias")
    }
    assert all(steps == [0, 2] for steps in histograms.values())


def test_a_job_without_logs_yet_or_unknown(client: TestClient, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        queued = jobs.create_job(session=session, request=TrainRequest.model_validate(chapter_request())).id
    response = client.get(f"/jobs/{queued}/tensorboard")
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "no_tensorboard_logs"
    assert "it is queued" in response.json()["error"]["message"]
    assert client.get(f"/jobs/{'f' * 32}/tensorboard").status_code == 404


def test_histogram_freq_is_checked(client: TestClient) -> None:
    body = chapter_request()
    body["fit"]["tensorboard"] = {"histogram_freq": -1}
    response = client.post("/train", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["errors"][0]["path"] == "fit.tensorboard.histogram_freq"
    body["fit"]["tensorboard"] = {"histograms": True}
    response = client.post("/train", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["errors"][0]["path"] == "fit.tensorboard.histograms"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_trainserve_tensorboard_serves_the_stores_logs(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    """The command starts TensorBoard over the store's logs: its HTTP API lists the job's two runs and answers
    the job's losses."""
    job = train(client, {**chapter_request(epochs=2), "fit": {"epochs": 2, "validation_split": 0.2}})
    assert job["status"] == "succeeded", job["error"]
    port = free_port()
    assert command_line(Path(settings.model_store) / TENSORBOARD, "127.0.0.1", port)[-6:] == [
        "--logdir",
        str(Path(settings.model_store) / TENSORBOARD),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = (tmp_path / "tensorboard.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "tensorboard", "--port", str(port)],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        runs: list[str] = []
        while f"{job['job_id']}/validation" not in runs:
            assert process.poll() is None, (tmp_path / "tensorboard.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "tensorboard.log").read_text()
            with contextlib.suppress(OSError):
                runs = get_json(f"http://127.0.0.1:{port}/data/runs")
            time.sleep(0.5)
        assert f"{job['job_id']}/train" in runs
        query = urllib.parse.urlencode({"run": f"{job['job_id']}/train", "tag": "epoch_loss"})
        points = get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}")
        assert [step for _, step, _ in points] == [0, 1]
        losses = [row["loss"] for row in job["history"]]
        np.testing.assert_allclose([value for _, _, value in points], losses, rtol=1e-6)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def test_trainserve_tensorboard_says_how_to_install_it_when_missing(settings: Settings) -> None:
    """Run as if TensorBoard were not installed (its import refused): exit 2 with the command to install it."""
    code = "import sys; sys.modules['tensorboard'] = None; from service.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "tensorboard"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "pip install 'trainserve[tensorboard]'" in " ".join(result.stderr.split())
