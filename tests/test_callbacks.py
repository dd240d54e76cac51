"""Callbacks, learning-rate schedules and validation data, trained by the real worker: early stopping really stops
and restores, the checkpoint publishes its best epoch, every epoch records its learning rate, and what Keras would
refuse or silently ignore is refused at submit with its path."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import chapter_request, train
from tests.test_events import read_events


def digits_request(epochs: int, **fit: Any) -> dict[str, Any]:
    """The chapter's relu + Adam model on digits, validated on the held-out test split (so the job's evaluation
    is computed on exactly its validation rows)."""
    body = chapter_request(epochs=epochs)
    body["fit"] = {"epochs": epochs, "batch_size": 32, "seed": 42, "validation_data": "test", **fit}
    return body


def errors_of(client: TestClient, body: dict[str, Any]) -> dict[str, str]:
    response = client.post("/train", json=body)
    assert response.status_code == 422, response.text
    return {error["path"]: error["message"] for error in response.json()["error"]["errors"]}


@pytest.mark.slow
def test_early_stopping_stops_and_restores_the_best_epoch(client: TestClient) -> None:
    # No later epoch can improve val_loss by 10: the first epoch stays the best, and patience 2 stops at the third.
    stop = {"type": "early_stopping", "patience": 2, "min_delta": 10.0, "restore_best_weights": True}
    job = train(client, digits_request(20, callbacks=[stop]))
    assert job["status"] == "succeeded", job["error"]
    assert [row["epoch"] for row in job["history"]] == [1, 2, 3]
    assert job["progress"] == {"epoch": 3, "epochs": 20}
    outcome = job["training"]
    assert outcome["epochs_run"] == 3
    assert outcome["stopped_epoch"] == 3
    assert outcome["best_epoch"] == outcome["published_epoch"] == 1
    assert outcome["monitor"] == "val_loss"
    assert outcome["stop_reason"].startswith("early_stopping: val_loss did not improve by more than 10 for 2 epochs")
    # The published weights are the first epoch's: evaluated on the validation rows, they give its val_loss.
    first = job["history"][0]
    assert job["evaluation"]["loss"] == pytest.approx(first["val_loss"], abs=1e-5)
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["metrics"]["val_loss"] == pytest.approx(first["val_loss"], abs=1e-7)


@pytest.mark.slow
def test_the_checkpoint_publishes_its_best_epoch(client: TestClient) -> None:
    # A learning rate high enough that val_accuracy goes up and down: the best epoch is rarely the last.
    body = digits_request(8, callbacks=[{"type": "checkpoint", "monitor": "val_accuracy"}])
    body["compile"]["optimizer"] = {"type": "sgd", "learning_rate": 0.5}
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    history = job["history"]
    accuracies = [row["val_accuracy"] for row in history]
    best = accuracies.index(max(accuracies)) + 1  # the first of equals, as save_best_only keeps it
    assert job["training"]["best_epoch"] == job["training"]["published_epoch"] == best
    assert job["training"]["stopped_epoch"] is None
    assert job["evaluation"]["accuracy"] == pytest.approx(max(accuracies), abs=1e-6)
    assert job["evaluation"]["loss"] == pytest.approx(history[best - 1]["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_every_epoch_records_its_learning_rate(client: TestClient) -> None:
    # A plateau from the second epoch on (none improves by 10 on the first): the rate falls tenfold after each.
    plateau = {"type": "reduce_lr_on_plateau", "monitor": "loss", "patience": 0, "min_delta": 10.0, "factor": 0.1}
    job = train(client, digits_request(3, callbacks=[plateau]))
    assert job["status"] == "succeeded", job["error"]
    assert [row["learning_rate"] for row in job["history"]] == pytest.approx([1e-3, 1e-3, 1e-4], rel=1e-5)

    # A schedule on the optimizer: 1,437 rows in batches of 32 are 45 steps an epoch; the rate an epoch ends with
    # is the schedule's at its last step.
    body = digits_request(3)
    schedule = {"type": "exponential_decay", "initial_learning_rate": 0.01, "decay_steps": 45, "decay_rate": 0.5}
    body["compile"]["optimizer"] = {"type": "sgd", "learning_rate": schedule}
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    assert [row["learning_rate"] for row in job["history"]] == pytest.approx([0.005, 0.0025, 0.00125], rel=1e-5)
    assert job["training"] == {
        "epochs_run": 3,
        "stopped_epoch": None,
        "stop_reason": None,
        "best_epoch": None,
        "monitor": None,
        "published_epoch": 3,
    }


@pytest.mark.slow
def test_the_event_stream_says_why_a_job_stopped_early(live_url: str) -> None:
    stop = {"type": "early_stopping", "monitor": "val_accuracy", "patience": 1, "min_delta": 1.0}
    with httpx.Client(base_url=live_url, timeout=60) as http:
        job_id = http.post("/train", json=digits_request(10, callbacks=[stop])).json()["job_id"]
        with http.stream("GET", f"/jobs/{job_id}/events") as response:
            events = [e for e in read_events(response) if "event" in e]
    assert [e["data"]["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    last = events[-1]
    assert last["event"] == "status"
    assert last["data"]["status"] == "succeeded"
    assert last["data"]["training"]["stopped_epoch"] == 2
    assert last["data"]["training"]["stop_reason"].startswith("early_stopping: val_accuracy did not improve")


def test_what_keras_refuses_or_ignores_is_refused_at_submit(client: TestClient) -> None:
    body = chapter_request()  # digits, validation_split 0.2
    body["fit"]["callbacks"] = [{"type": "early_stopping", "monitor": "val_acuracy"}]
    message = errors_of(client, body)["fit.callbacks[0].monitor"]
    assert "'val_acuracy', which this fit does not log; it logs: loss, accuracy, val_loss, val_accuracy" in message

    body = chapter_request()
    body["fit"] |= {"validation_split": 0.0, "callbacks": [{"type": "checkpoint"}]}
    assert "val_* needs validation_split or validation_data" in errors_of(client, body)["fit.callbacks[0].monitor"]

    body = chapter_request()
    schedule = {"type": "cosine_decay", "initial_learning_rate": 0.1, "decay_steps": 100}
    body["compile"]["optimizer"] = {"type": "adam", "learning_rate": schedule}
    body["fit"]["callbacks"] = [{"type": "reduce_lr_on_plateau"}]
    assert "Keras refuses the two together" in errors_of(client, body)["fit.callbacks[0]"]

    body = chapter_request()
    body["fit"]["callbacks"] = [{"type": "checkpoint"}, {"type": "checkpoint", "monitor": "val_accuracy"}]
    assert "a second one" in errors_of(client, body)["fit.callbacks[1]"]

    body = chapter_request()
    body["fit"]["validation_data"] = {"size": 0.2, "random_state": 42}
    assert "not both" in errors_of(client, body)["fit.validation_split"]

    body = chapter_request()
    body["dataset"].pop("test_size")
    body["fit"] |= {"validation_split": 0.0, "validation_data": "test"}
    assert "has no test split to validate on" in errors_of(client, body)["fit.validation_data"]

    body = chapter_request()
    body["compile"]["optimizer"] = {"type": "sgd", "learning_rate": {"type": "exponential_dekay"}}
    message = errors_of(client, body)["compile.optimizer.learning_rate.type"]
    assert message == "unknown schedule 'exponential_dekay'; did you mean 'exponential_decay'?"

    body = chapter_request()
    body["compile"]["optimizer"] = {"type": "sgd", "learning_rate": -1}
    assert errors_of(client, body) == {
        "compile.optimizer.learning_rate": "Input should be greater than 0 (received -1)"
    }

    body = chapter_request()
    schedule = {"type": "piecewise_constant_decay", "boundaries": [100, 50], "values": [0.1, 0.01]}
    body["compile"]["optimizer"] = {"type": "sgd", "learning_rate": schedule}
    message = errors_of(client, body)["compile.optimizer.learning_rate"]
    assert "values needs one more entry than boundaries: 2 boundaries, 2 values" in message


def test_the_held_out_split_is_stratified_only_when_asked() -> None:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from service.datasets.builtin import LoadedDataset
    from service.spec import TrainRequest
    from worker.training import prepare

    digits = load_digits()
    data = LoadedDataset(digits.images.astype(np.float32), digits.target.astype(np.int64), None, None)
    for stratify in (False, True):
        body = chapter_request()
        body["dataset"]["stratify"] = stratify
        body["fit"] |= {"validation_split": 0.0, "validation_data": {"size": 0.25, "random_state": 3}}
        splits = prepare(TrainRequest.model_validate(body), data, num_classes=10)
        # What the learner's train_test_split calls give: the test split, then validation rows out of the rest.
        x, x_test, y, _ = train_test_split(
            digits.images, digits.target, test_size=0.2, random_state=42, stratify=digits.target if stratify else None
        )
        x, x_val, y, y_val = train_test_split(x, y, test_size=0.25, random_state=3)
        assert splits.x_test is not None
        assert splits.x_val is not None
        assert splits.y_val is not None
        assert np.array_equal(splits.x_test, (x_test * np.float32(1 / 16)).astype(np.float32))
        assert np.array_equal(splits.x_train, (x * np.float32(1 / 16)).astype(np.float32))
        assert np.array_equal(splits.x_val, (x_val * np.float32(1 / 16)).astype(np.float32))
        assert np.array_equal(splits.y_val, y_val)
