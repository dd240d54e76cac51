"""The Python client against the API served by uvicorn and a real worker, as a Keras user in Python uses it: a real
keras.Sequential trained on digits, its epochs followed live, predictions as NumPy over JSON and .npy, its summary,
the downloaded keras.Model, an experiment, refusals and an API key."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from bench.processes import serving
from service.embedded import free_port
from service.settings import Settings
from tests.conftest import WorkerProcess, chapter_model_in_keras, chapter_request, printed_summary, settings_env
from trainserve import (
    AuthenticationError,
    Client,
    InvalidRequestError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    WaitTimeoutError,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DIGITS = {"name": "digits", "rescale": 1 / 16, "test_size": 0.2, "random_state": 42}


@pytest.fixture
def client(live_url: str) -> Iterator[Client]:
    with Client(live_url) as client:
        yield client


def test_a_keras_model_trains_predicts_and_comes_back(
    client: Client, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = chapter_model_in_keras(input_shape=(8, 8), activation="relu", name="digits from keras")
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    job = client.train(
        model,
        dataset=DIGITS,
        epochs=3,
        validation_split=0.2,
        seed=42,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=5)],
        name="client: chapter relu",
    )
    assert job.created is not None
    assert job.created["build"] is not None
    assert job.created["build"]["total_params"] == 7510
    assert job.spec["compile"]["optimizer"]["type"] == "adam"
    assert job.spec["fit"]["callbacks"][0]["type"] == "early_stopping"

    assert job.wait() is job
    out = capsys.readouterr()
    assert "epoch" in out.err, "the bar (tqdm's text bar outside Jupyter) went to stderr"
    table = out.out.splitlines()
    assert table[0].split() == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    assert [line.split()[0] for line in table[1:]] == ["1", "2", "3"]

    assert job.status == "succeeded"
    assert [row["epoch"] for row in job] == [1, 2, 3], "an ended job's stream tells every epoch again"
    assert job.history.epochs == [1, 2, 3]
    assert len(job.history["val_loss"]) == 3
    assert job.evaluation is not None
    assert 0 < job.evaluation["accuracy"] <= 1
    assert job.training is not None
    assert job.training["epochs_run"] == 3
    assert "succeeded" in job._repr_html_()
    assert "model = keras.Sequential(" in job.script()

    served = job.model
    assert served.id == job.model_id
    assert served.rescale == 1 / 16
    assert served.summary_text == printed_summary(model), "exactly what model.summary() prints"
    assert "Total params: 7,510" in served.summary_text
    assert client.model(f"{served.name}@{served.version}").id == served.id
    assert client.model(served.name).version >= served.version
    with pytest.raises(NotFoundError):
        client.model("no such model@1")

    digits = load_digits()
    few = digits.images[:5]
    as_json = served.predict(few, wire="json")
    as_npy = served.predict(few, wire="npy")
    assert as_json.shape == (5, 10)
    assert as_json.dtype == np.float32
    np.testing.assert_allclose(as_json, as_npy, atol=1e-6)
    np.testing.assert_allclose(client.predict(served.name, few), as_json, atol=1e-6)  # by name, from the client
    every = served.predict(digits.images)  # 115,008 values: sent and answered as .npy
    assert every.shape == (1797, 10)
    np.testing.assert_allclose(every[:5], as_json, atol=1e-6)
    classified = served.classify(few)
    assert classified.classes.tolist() == as_json.argmax(axis=1).tolist()
    assert classified.labels is None

    local = served.download(tmp_path)
    assert (tmp_path / f"{served.id}.keras").is_file()
    assert isinstance(local, keras.Model)
    mine = local.predict(few * served.rescale, verbose=0)
    np.testing.assert_allclose(mine, as_json, atol=1e-5)
    assert mine.argmax(axis=1).tolist() == as_json.argmax(axis=1).tolist()
    assert "Trainable params: 7,510" in printed_summary(served.download())  # beside the optimizer's state
    assert isinstance(client.download(served.id), keras.Model)

    axes = job.plot()
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy"]
    assert [len(ax.get_lines()) for ax in axes] == [2, 2], "training and validation"
    assert client.jobs(limit=50).count >= 1
    assert served.id in [m.id for m in client.models(name=served.name)]


def test_failed_cancelled_and_refused_jobs_raise_clear_errors(client: Client) -> None:
    failing = chapter_request("fashion_mnist")
    failing["dataset"] = {"name": "mnist"}  # not in this machine's Keras cache
    with pytest.raises(JobFailedError, match=r"failed: DatasetUnavailable: ") as failed:
        client.train(failing).wait(progress=False)
    assert failed.value.job["status"] == "failed"

    typo = chapter_request()
    typo["model"]["layers"][1]["activation"] = "sigmod"
    with pytest.raises(InvalidRequestError) as refused:
        client.train(typo)
    assert refused.value.status == 422
    assert refused.value.paths == ["model.layers[1].activation"]
    assert "did you mean 'sigmoid'?" in str(refused.value)

    long = client.train(chapter_request(epochs=300), batch_size=8)
    with pytest.raises(WaitTimeoutError):
        long.wait(progress=False, timeout=1.5)
    long.cancel()
    with pytest.raises(JobCancelledError):
        long.wait(progress=False)
    assert long.status == "cancelled"


def test_an_experiment_through_the_client(client: Client) -> None:
    body: dict[str, Any] = json.loads((ROOT / "examples" / "experiment_activation.json").read_text(encoding="utf-8"))
    body["base"]["fit"]["epochs"] = 2
    body["name"] = "client: sigmoid or relu"
    experiment = client.experiments.create(body)
    assert experiment.created is not None
    assert experiment.created["checked"] == 2
    assert experiment.wait(progress=False) is experiment
    assert experiment.status == "succeeded"
    board = experiment.leaderboard
    assert [trial["state"] for trial in board.ranked()] == ["complete", "complete"]
    assert experiment.best is not None
    assert board.ranked()[0]["number"] == experiment.best["number"]
    assert sorted(trial["params"]["model.layers[1].activation"] for trial in experiment.trials) == ["relu", "sigmoid"]
    assert experiment.model.predict(load_digits().images[:2]).shape == (2, 10)
    assert experiment.trial_job(0).status == "succeeded"
    assert experiment.id in [e.id for e in client.experiments.list(status="succeeded", limit=50)]

    body["space"] = {"model.layers[1].units": {"type": "choice", "values": [100, 0]}}
    with pytest.raises(InvalidRequestError) as refused:
        client.experiments.create(body)
    assert "with model.layers[1].units = 0" in str(refused.value)


@pytest.fixture(scope="module")
def keyed_url(settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second `trainserve api` on the same database and queue that wants an API key: `trainer`, or `viewer`
    which may only read and predict."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "service.cli", "api", "--port", url.rpartition(":")[2]]
    env = settings_env(settings) | {"TRAINSERVE_API_KEYS": "trainer,viewer:read"}
    with serving(command, env, tmp_path_factory.mktemp("keyed") / "api.log", f"{url}/healthz"):
        yield url


def test_an_api_key_is_sent_and_a_missing_or_read_only_one_is_refused(
    keyed_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Client(keyed_url) as anonymous, pytest.raises(AuthenticationError) as refused:
        anonymous.jobs()
    assert refused.value.status == 401
    with Client(keyed_url, api_key="viewer") as viewer:
        assert viewer.jobs(limit=1).count >= 0
        with pytest.raises(AuthenticationError) as read_only:
            viewer.train(chapter_request(epochs=1))
        assert read_only.value.status == 403
    monkeypatch.setenv("TRAINSERVE_API_KEY", "trainer")
    with Client(keyed_url) as trainer:
        job = trainer.train(chapter_request(epochs=2))
        live = [row["epoch"] for row in job]  # from its event stream, as each epoch ends
        assert live == [1, 2]
        assert job.status == "succeeded"
        assert job.model.predict(load_digits().images[:1]).shape == (1, 10)
