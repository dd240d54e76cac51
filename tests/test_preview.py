"""`POST /train?dry_run=true`: the same checks as a submit, answered with the model's summary (what
`GET /models/{id}/summary` will say once it is trained, and what Keras' own `model.summary()` prints) and the build's
findings, with nothing recorded, queued or remembered of an Idempotency-Key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.embedded import free_port
from service.examples import chapter_examples
from service.queue import JobQueue
from service.settings import Settings
from tests.conftest import chapter_model_in_keras, printed_summary, train

PREVIEW = "/train?dry_run=true"


@pytest.fixture
def unconsumed(tmp_path: Path, redis_url: str, keras_cache: Path) -> Iterator[tuple[TestClient, JobQueue]]:
    """The API with its own database and a queue no worker reads, so every message sent stays there to count."""
    from service.api.app import create_app

    settings = Settings(
        home=tmp_path, redis_url=redis_url, keras_cache=keras_cache, queue=f"preview-{free_port()}", max_epochs=50
    )
    queue = JobQueue(settings)
    with TestClient(create_app(settings)) as client:
        yield client, queue
    queue.redis.delete(settings.queue)
    queue.close()


def without_layer_names(body: dict[str, Any]) -> dict[str, Any]:
    for layer in body["model"]["layers"]:
        layer.pop("name", None)
    return body


def test_the_preview_is_the_summary_keras_prints(unconsumed: tuple[TestClient, JobQueue]) -> None:
    client, _ = unconsumed
    # The book's own model: Fashion-MNIST's 28×28 images, a sigmoid hidden layer of 100.
    fashion = client.post(PREVIEW, json=chapter_examples()["fashion_mnist_sigmoid"])
    assert fashion.status_code == 200, fashion.text
    preview = fashion.json()
    keras_model = chapter_model_in_keras()
    assert preview["text"] == printed_summary(keras_model)
    assert preview["total_params"] == keras_model.count_params() == 79_510
    assert preview["trainable_params"] == 79_510
    assert preview["non_trainable_params"] == 0
    assert preview["name"] == "패션 MNIST 모델"
    assert [(layer["name"], layer["type"], layer["output_shape"], layer["params"]) for layer in preview["layers"]] == [
        ("flatten", "Flatten", [None, 784], 0),
        ("hidden", "Dense", [None, 100], 78_500),
        ("output", "Dense", [None, 10], 1_010),
    ]
    # The build's findings, as POST /train answers them.
    assert preview["build"] == {
        "total_params": 79_510,
        "output_shape": [None, 10],
        "activation_bytes": 4 * (784 + 784 + 100 + 10),
        "training_data_bytes": 70_000 * (784 * 4 + 8),
    }

    digits = client.post(PREVIEW, json=chapter_examples()["digits_sigmoid"]).json()
    keras_digits = chapter_model_in_keras(input_shape=(8, 8), name="손글씨 숫자 모델")
    assert digits["text"] == printed_summary(keras_digits)
    assert digits["total_params"] == 7_510
    assert [layer["params"] for layer in digits["layers"]] == [0, 6_500, 1_010]

    # Layers left unnamed are named as in a fresh Keras session, however many models this process built before.
    for _ in range(2):
        unnamed = client.post(PREVIEW, json=without_layer_names(chapter_examples()["digits_sigmoid"])).json()
        assert [layer["name"] for layer in unnamed["layers"]] == ["flatten", "dense", "dense_1"]


def test_a_preview_records_queues_and_remembers_nothing(unconsumed: tuple[TestClient, JobQueue]) -> None:
    client, queue = unconsumed
    body = chapter_examples()["digits_sigmoid"]
    jobs_before = client.get("/jobs").json()["count"]
    answered = client.post(PREVIEW, json=body, headers={"Idempotency-Key": "first-try"})
    assert answered.status_code == 200, answered.text
    assert "location" not in answered.headers
    assert "job_id" not in answered.json()
    assert client.get("/jobs").json()["count"] == jobs_before
    assert queue.depth() == (0, 0), "no Celery message"

    # The key the preview carried is still unused: the submit with it makes the job, and its retry replays it.
    created = client.post("/train", json=body, headers={"Idempotency-Key": "first-try"})
    assert created.status_code == 202, created.text
    assert "idempotent-replayed" not in created.headers
    assert created.json()["build"] == answered.json()["build"]
    assert queue.depth()[0] == 1
    again = client.post("/train", json=body, headers={"Idempotency-Key": "first-try"})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["job_id"] == created.json()["job_id"]
    # A preview with a used key previews; it neither replays the job nor conflicts with a different request.
    changed = chapter_examples()["digits_relu"]
    after = client.post(PREVIEW, json=changed, headers={"Idempotency-Key": "first-try"})
    assert after.status_code == 200, after.text
    assert after.json()["total_params"] == 7_510
    assert client.get("/jobs").json()["count"] == jobs_before + 1
    assert queue.depth()[0] == 1


def wrong(change: str) -> dict[str, Any]:
    body = chapter_examples()["digits_sigmoid"]
    layers = body["model"]["layers"]
    if change == "units":
        layers[2]["units"] = 0
    elif change == "activation":
        layers[1]["activation"] = "sigmod"
    elif change == "classes":
        layers[2]["units"] = 11
    elif change == "epochs":
        body["fit"]["epochs"] = 51
    elif change == "dataset":
        body["dataset"] = {"id": "0" * 32}
    elif change == "shape":
        layers.insert(1, {"type": "conv2d", "filters": 4})
    elif change == "several":
        layers[1]["units"] = -1
        body["compile"]["optimizer"] = {"type": "sgd", "learning_rate": 0, "momentum": 1.5}
        body["fit"]["batch_size"] = 0
    return body


@pytest.mark.parametrize(
    ("change", "paths"),
    [
        ("units", ["model.layers[2].units"]),
        ("activation", ["model.layers[1].activation"]),
        ("classes", ["model.layers[2].units"]),
        ("epochs", ["fit.epochs"]),
        ("dataset", ["dataset.id"]),
        ("shape", ["model.layers[1]"]),
        (
            "several",
            [
                "model.layers[1].units",
                "compile.optimizer.learning_rate",
                "compile.optimizer.momentum",
                "fit.batch_size",
            ],
        ),
    ],
)
def test_a_wrong_request_is_the_same_422_as_its_submit(
    unconsumed: tuple[TestClient, JobQueue], change: str, paths: list[str]
) -> None:
    client, queue = unconsumed
    body = wrong(change)
    previewed = client.post(PREVIEW, json=body)
    submitted = client.post("/train", json=body)
    assert previewed.status_code == submitted.status_code == 422, previewed.text
    assert previewed.json() == submitted.json()
    assert [problem["path"] for problem in previewed.json()["error"]["errors"]] == paths
    assert queue.depth() == (0, 0)


def test_the_preview_is_what_the_trained_model_says_of_itself(client: TestClient) -> None:
    body = without_layer_names(chapter_examples()["digits_relu_adam"])
    body["fit"]["epochs"] = 1
    preview = client.post(PREVIEW, json=body)
    assert preview.status_code == 200, preview.text
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    summary = client.get(f"/models/{job['model_id']}/summary").json()
    assert {key: value for key, value in preview.json().items() if key != "build"} == summary


def test_the_openapi_document_declares_the_preview(unconsumed: tuple[TestClient, JobQueue]) -> None:
    client, _ = unconsumed
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/train"]["post"]
    dry_run = next(p for p in operation["parameters"] if p["name"] == "dry_run")
    assert dry_run["in"] == "query"
    assert dry_run["schema"]["type"] == "boolean"
    assert dry_run["schema"]["default"] is False
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SpecPreview"
    }
    preview = document["components"]["schemas"]["SpecPreview"]
    assert {"layers", "total_params", "text", "build"} <= set(preview["properties"])
