"""End to end over HTTP: a real Celery worker trains real Keras models and the API serves them."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits

from service.datasets.builtin import FASHION_MNIST_CLASSES
from service.queue import TRAIN_TASK
from service.settings import Settings
from tests.conftest import WorkerProcess, chapter_model_in_keras, chapter_request, printed_summary, train, wait_for_job

pytestmark = pytest.mark.slow


def test_train_poll_predict_summary_on_digits(client: TestClient) -> None:
    response = client.post("/train", json=chapter_request(epochs=4))
    assert response.status_code == 202
    created = response.json()
    assert created["status"] == "queued"
    assert response.headers["location"] == f"/jobs/{created['job_id']}"
    # The dry build's findings: 64·100+100 + 100·10+10 parameters; one 8×8 image, 100 and 10 outputs in float32.
    assert created["build"]["total_params"] == 7510
    assert created["build"]["output_shape"] == [None, 10]
    assert created["build"]["activation_bytes"] == 4 * (64 + 64 + 100 + 10)

    job = wait_for_job(client, created["job_id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == {"epoch": 4, "epochs": 4}
    assert job["attempts"] == 1
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert [row["epoch"] for row in job["history"]] == [1, 2, 3, 4]
    for row in job["history"]:
        assert set(row) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
        assert row["learning_rate"] == pytest.approx(0.001)  # Adam's default, the epoch's rate
    assert job["history"][-1]["loss"] < job["history"][0]["loss"]
    # test_size=0.2 in the example: a held-out split evaluated after training
    assert set(job["evaluation"]) == {"loss", "accuracy"}
    assert job["evaluation"]["accuracy"] > 0.8

    model_id = job["model_id"]
    model = client.get(f"/models/{model_id}").json()
    assert model["job_id"] == job["job_id"]
    assert model["input_shape"] == [8, 8]
    assert model["metrics"]["accuracy"] == pytest.approx(job["history"][-1]["accuracy"])
    assert model["evaluation"] == job["evaluation"]
    assert model["total_params"] == 64 * 100 + 100 + 100 * 10 + 10

    digits = load_digits()
    predicted = client.post("/predict", json={"model_id": model_id, "instances": digits.images[:50].tolist()})
    assert predicted.status_code == 200, predicted.text
    answer = predicted.json()
    assert len(answer["predictions"]) == 50
    assert len(answer["predictions"][0]) == 10
    assert np.allclose(np.sum(answer["predictions"], axis=1), 1.0, atol=1e-4)
    assert answer["classes"] == list(np.argmax(answer["predictions"], axis=1))
    assert np.mean(np.array(answer["classes"]) == digits.target[:50]) > 0.8
    assert answer["labels"] is None  # digits' classes are the digits themselves

    # The /docs example for POST /predict works once its model_id is filled in.
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    example = body["content"]["application/json"]["schema"]["examples"][0]
    answer = client.post("/predict", json={**example, "model_id": model_id}).json()
    assert answer["classes"] == [0]


def test_chapter_model_on_fashion_mnist_with_unicode_names(client: TestClient) -> None:
    """The chapter's 784-100-10 sigmoid model named '패션 MNIST 모델', trained from Keras' cache."""
    body = chapter_request("fashion_mnist", "sigmoid", epochs=3)
    body["model"]["layers"][1]["name"] = "은닉층"
    body["model"]["layers"][2]["name"] = "출력층"
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    # fashion_mnist ships its own test split, which is evaluated
    assert job["evaluation"] is not None

    summary = client.get(f"/models/{job['model_id']}/summary").json()
    assert summary["name"] == "패션 MNIST 모델"
    assert [(layer["name"], layer["type"], layer["output_shape"], layer["params"]) for layer in summary["layers"]] == [
        ("flatten", "Flatten", [None, 784], 0),
        ("은닉층", "Dense", [None, 100], 78_500),
        ("출력층", "Dense", [None, 10], 1_010),
    ]
    assert summary["total_params"] == summary["trainable_params"] == 79_510
    assert summary["non_trainable_params"] == 0

    assert summary["text"] == printed_summary(chapter_model_in_keras("은닉층", "출력층"))
    assert "Total params: 79,510" in summary["text"]
    text = client.get(f"/models/{job['model_id']}/summary", params={"format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == summary["text"]

    model = client.get(f"/models/{job['model_id']}").json()
    assert model["class_names"] == list(FASHION_MNIST_CLASSES)
    assert model["keras_names"]["model"].startswith("MNIST_")
    assert all(re.fullmatch(r"[A-Za-z0-9_.>-]+", name) for name in model["keras_names"]["layers"])

    # Class 3 in the generated images is a bright band at rows 10..13: the model should call it 'Dress'.
    image = np.full((28, 28), 20.0)
    image[10:14, :] = 230
    answer = client.post("/predict", json={"model_id": job["model_id"], "instances": [image.tolist()]}).json()
    assert answer["classes"] == [3]
    assert answer["labels"] == ["Dress"]


def test_download_is_a_keras_file_that_predicts_the_same(client: TestClient) -> None:
    job = train(client, chapter_request(epochs=1))
    model_id = job["model_id"]
    response = client.get(f"/models/{model_id}/download")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert f"{model_id}.keras" in response.headers["content-disposition"]
    path = Path(f"/tmp/{model_id}.keras")
    path.write_bytes(response.content)
    try:
        loaded = keras.models.load_model(path, compile=False)
    finally:
        path.unlink()
    images = load_digits().images[:5]
    served = client.post("/predict", json={"model_id": model_id, "instances": images.tolist()}).json()
    local = loaded.predict_on_batch(images.astype(np.float32) / 16)  # the example's rescale
    assert np.allclose(served["predictions"], local, atol=1e-5)


@pytest.mark.parametrize(
    ("dataset", "loss", "units", "activation", "optimizer"),
    [
        ("iris", "categorical_crossentropy", 3, "softmax", {"type": "sgd", "momentum": 0.9, "nesterov": True}),
        ("breast_cancer", "binary_crossentropy", 1, "sigmoid", "rmsprop"),
        ("wine", "sparse_categorical_crossentropy", 3, "softmax", "adagrad"),
    ],
)
def test_tabular_datasets_and_label_encodings(
    client: TestClient, dataset: str, loss: str, units: int, activation: str, optimizer: object
) -> None:
    shapes = {"iris": 4, "breast_cancer": 30, "wine": 13}
    body = {
        "model": {
            "input_shape": [shapes[dataset]],
            "layers": [
                {"type": "batch_normalization"},
                {"type": "dense", "units": 16, "activation": "relu"},
                {"type": "dropout", "rate": 0.1},
                {"type": "dense", "units": units, "activation": activation},
            ],
        },
        "compile": {"optimizer": optimizer, "loss": loss, "metrics": ["accuracy"]},
        "dataset": {"name": dataset, "test_size": 0.25, "random_state": 0},
        "fit": {"epochs": 2, "batch_size": 16, "seed": 1},
    }
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    assert len(job["history"]) == 2
    summary = client.get(f"/models/{job['model_id']}/summary").json()
    assert summary["non_trainable_params"] == 2 * shapes[dataset]  # BatchNormalization's moving mean/variance
    answer = client.post("/predict", json={"model_id": job["model_id"], "instances": [[0.0] * shapes[dataset]]})
    assert answer.status_code == 200
    assert answer.json()["classes"][0] in range(max(units, 2))
    assert answer.json()["labels"] is not None


def test_keras_dataset_without_cache_fails_with_the_reason(client: TestClient) -> None:
    body = chapter_request("fashion_mnist")
    body["dataset"] = {"name": "mnist", "rescale": 1 / 255}
    job = train(client, body)
    assert job["status"] == "failed"
    assert job["error"]["type"] == "DatasetUnavailable"
    assert "dataset 'mnist' is not in the Keras cache" in job["error"]["message"]
    assert "could not be downloaded" in job["error"]["message"]
    assert job["model_id"] is None


def test_conv2d_model_trains_on_digits_reshaped(client: TestClient) -> None:
    body = chapter_request(epochs=1)
    body["model"]["layers"] = [
        {"type": "reshape", "target_shape": [8, 8, 1]},
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu", "padding": "same"},
        {"type": "max_pooling2d", "pool_size": [2, 2]},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    summary = client.get(f"/models/{job['model_id']}/summary").json()
    assert [layer["type"] for layer in summary["layers"]] == ["Reshape", "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert summary["layers"][1]["params"] == 3 * 3 * 1 * 4 + 4


def test_unknown_ids_are_404(client: TestClient) -> None:
    unknown = "0123456789abcdef0123456789abcdef"
    for path in (f"/jobs/{unknown}", f"/models/{unknown}", f"/models/{unknown}/summary", f"/models/{unknown}/download"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found"
    # Malformed ids never reach the database or the model store.
    for path in ("/jobs/nope", "/models/..%2F..%2Fetc%2Fpasswd/download", "/models/ABC/summary"):
        response = client.get(path)
        assert response.status_code in (404, 422), path
        if response.status_code == 422:
            assert response.json()["error"]["errors"][0]["path"] == "path.job_id" or "model_id" in response.text
    response = client.post("/predict", json={"model_id": "nope", "instances": [[1]]})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no model with id 'nope'"


def test_predict_rejects_wrong_shapes_and_values(client: TestClient) -> None:
    job = train(client, chapter_request(epochs=1))
    model_id = job["model_id"]

    def problem(instances: object) -> str:
        response = client.post("/predict", json={"model_id": model_id, "instances": instances})
        assert response.status_code == 422, response.text
        message: str = response.json()["error"]["message"]
        return message

    assert problem([[0.0] * 64]) == "instances have shape [1, 64]; this model expects [1, 8, 8]"
    assert problem([[[0.0] * 8] * 8, [[0.0] * 8] * 7]).startswith(
        "instances must be numbers in an array of shape [2, 8, 8]"
    )
    assert problem([[["a"] * 8] * 8]).startswith("instances must be numbers")
    assert problem([]).startswith("List should have at least 1 item")
    response = client.post(
        "/predict",
        content=f'{{"model_id": "{model_id}", "instances": [[[NaN]]]}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422


def test_jobs_list_newest_first_filter_and_pages(client: TestClient) -> None:
    failed = train(
        client,
        {
            **chapter_request(),
            "dataset": {"name": "mnist"},
            "model": {**chapter_request()["model"], "input_shape": [28, 28]},
        },
    )
    ok = train(client, chapter_request(epochs=1))
    listing = client.get("/jobs", params={"limit": 2}).json()
    assert [job["job_id"] for job in listing["data"]] == [ok["job_id"], failed["job_id"]]
    assert listing["count"] >= 2
    only_failed = client.get("/jobs", params={"status": "failed", "limit": 500}).json()
    assert failed["job_id"] in {job["job_id"] for job in only_failed["data"]}
    assert all(job["status"] == "failed" for job in only_failed["data"])
    assert only_failed["count"] == len(only_failed["data"])
    second_page = client.get("/jobs", params={"limit": 1, "offset": 1}).json()
    assert second_page["data"][0]["job_id"] == failed["job_id"]
    bad = client.get("/jobs", params={"status": "done"})
    assert bad.status_code == 422
    assert bad.json()["error"]["errors"][0]["path"] == "query.status"
    models = client.get("/models", params={"limit": 1}).json()
    assert models["data"][0]["model_id"] == ok["model_id"]


def test_a_redelivered_message_never_trains_twice(client: TestClient) -> None:
    """Celery delivers at least once: a second message for a finished job must not train it again."""
    job = train(client, chapter_request(epochs=2))
    models_before = client.get("/models").json()["count"]
    app_celery = client.app.state.queue.celery  # type: ignore[attr-defined]
    app_celery.send_task(TRAIN_TASK, args=[job["job_id"]])
    app_celery.send_task(TRAIN_TASK, args=[job["job_id"]])
    marker = train(client, chapter_request(epochs=1))  # queued behind both: once it ends, they have run
    assert marker["status"] == "succeeded"
    again = client.get(f"/jobs/{job['job_id']}").json()
    assert again["attempts"] == 1
    assert again["model_id"] == job["model_id"]
    assert len(again["history"]) == 2
    assert client.get("/models").json()["count"] == models_before + 1


def test_health_and_readiness(client: TestClient, settings: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}

    from service.api.app import create_app
    from service.embedded import free_port

    broken = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "api_keys": "k3y"})
    key = {"Authorization": "Bearer k3y"}
    with TestClient(create_app(broken)) as other:
        response = other.get("/readyz")
        assert response.status_code == 503
        # Why (the broker's address, a database's user) is told only with a key; without one, only what is down.
        assert response.json()["checks"] == {"database": "ok", "broker": "unavailable"}
        detailed = other.get("/readyz", headers=key)
        assert detailed.status_code == 503
        assert detailed.json()["checks"]["broker"].startswith("unreachable: ")
        assert detailed.json()["checks"]["database"] == "ok"
        # Nothing half-written: a job that cannot be queued is not kept.
        before = other.get("/jobs", headers=key).json()["count"]
        queued = other.post("/train", json=chapter_request(), headers=key)
        assert queued.status_code == 503
        assert queued.json()["error"]["type"] == "broker_unavailable"
        assert other.get("/jobs", headers=key).json()["count"] == before


def test_tensorflow_is_loaded_in_pool_children_only(worker: WorkerProcess, client: TestClient) -> None:
    import psutil

    train(client, chapter_request(epochs=1))  # the child has run a job
    parent = psutil.Process(worker.process.pid)
    children = parent.children(recursive=True)
    assert children, "the prefork pool has a child"

    def loads_tensorflow(pid: int) -> bool:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()

    assert not loads_tensorflow(parent.pid)
    assert all(loads_tensorflow(child.pid) for child in children)
    log = worker.log.read_text()
    assert log.count("ready with Keras") == len(children), "TensorFlow is imported once per child, not per job"


def test_no_model_file_without_a_record(client: TestClient, settings: Settings) -> None:
    records = {m["model_id"] for m in client.get("/models", params={"limit": 500}).json()["data"]}
    files = {p.name for p in Path(settings.model_store).iterdir() if p.is_file()}
    assert {p.partition(".")[0] for p in files} == records, "every file has its record"
    suffixes = {p.partition(".")[2] for p in files}
    assert suffixes == {"keras", "tflite", "savedmodel.tar", "weights.h5"}, "no temporary file is left behind"
    # Besides the models' files, only the jobs' TensorBoard logs.
    assert {p.name for p in Path(settings.model_store).iterdir() if p.is_dir()} <= {"tensorboard", "checkpoints"}


@pytest.mark.parametrize("rescale", [None, 1 / 255])
def test_pixels_become_one_float32_array_with_the_rescale(rescale: float | None) -> None:
    """keras.datasets arrive as uint8 pixels; the job makes float32 of them once, scaled if asked."""
    from service.datasets.builtin import LoadedDataset
    from service.spec import TrainRequest
    from worker.training import prepare

    pixels = np.array([[[0, 128], [255, 7]]] * 4, dtype=np.uint8)
    labels = np.array([0, 1, 0, 1], dtype=np.int64)
    body = chapter_request()
    body["model"] = {"input_shape": [2, 2], "layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]}
    body["dataset"] = {"name": "mnist", **({} if rescale is None else {"rescale": rescale})}
    request = TrainRequest.model_validate(body)
    splits = prepare(request, LoadedDataset(pixels, labels, pixels[:2], labels[:2]), num_classes=2)
    expected = pixels.astype(np.float32) * np.float32(1 if rescale is None else rescale)
    assert splits.x_train.dtype == np.float32
    assert splits.x_test is not None
    assert splits.x_test.dtype == np.float32
    assert np.array_equal(splits.x_train, expected)
    assert np.array_equal(splits.x_test, expected[:2])


def test_steps_per_execution_changes_no_number(client: TestClient) -> None:
    """The service's default runs many steps per call into TensorFlow; one step per call (plain `model.fit`) gives
    the same history, evaluation and predictions, and each job records how it ran."""
    jobs = []
    for steps in ("auto", 1):
        body = chapter_request(epochs=3)
        body["fit"] |= {"seed": 7, "shuffle": True, "validation_split": 0.2, "steps_per_execution": steps}
        jobs.append(train(client, body))
    fast, plain = jobs
    assert fast["status"] == plain["status"] == "succeeded", (fast["error"], plain["error"])
    # digits: 1,437 training rows, 0.2 of them for validation → 36 steps of 32 per epoch, all in one call
    assert fast["execution"] == {"steps_per_execution": 36, "jit_compile": False}
    assert plain["execution"] == {"steps_per_execution": 1, "jit_compile": False}
    for ours, theirs in zip(fast["history"], plain["history"], strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert fast["evaluation"] == pytest.approx(plain["evaluation"], abs=1e-6)
    digits = load_digits().images[:20].tolist()
    answers = [
        client.post("/predict", json={"model_id": job["model_id"], "instances": digits}).json()["predictions"]
        for job in jobs
    ]
    assert np.allclose(answers[0], answers[1], atol=1e-6)


def test_training_options_are_refused_by_name(client: TestClient) -> None:
    for fit, path in (({"steps_per_execution": 0}, "steps_per_execution"), ({"jit_compile": "yes"}, "jit_compile")):
        body = chapter_request()
        body["fit"] |= fit
        response = client.post("/train", json=body)
        assert response.status_code == 422, response.text
        assert any(error["path"].startswith(f"fit.{path}") for error in response.json()["error"]["errors"])


def test_a_seeded_job_reproduces_the_learners_script(client: TestClient) -> None:
    """The chapter's relu + Adam model on digits, seeded: the service's job (many steps per call) and the script a
    learner writes with plain Keras (default compile(), one step per call) report the same epochs."""
    from sklearn.model_selection import train_test_split

    body = chapter_request(epochs=3)
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    assert job["execution"]["steps_per_execution"] > 1

    digits = load_digits()
    x, _, y, _ = train_test_split(digits.images, digits.target, test_size=0.2, random_state=42)
    x = x * np.float32(body["dataset"]["rescale"])
    model = chapter_model_in_keras(input_shape=(8, 8), activation="relu", name="digits", seed=body["fit"]["seed"])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=3, batch_size=32, validation_split=0.2, verbose=0).history
    for epoch, row in enumerate(job["history"]):
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            assert row[key] == pytest.approx(history[key][epoch], abs=1e-4), (epoch, key)
