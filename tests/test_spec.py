"""The spec: validation errors with JSON paths, the dry build, and the Keras objects it maps to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import keras
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.datasets.catalogue import as_requested, builtin_info
from service.examples import all_examples, chapter_examples
from service.keras_build import build_model, dry_build, runnable_name, summarize
from service.spec import ACTIVATIONS, METRICS, OPTIMIZER_TYPES, UNUSABLE_ACTIVATIONS, CompileSpec, TrainRequest
from tests.conftest import chapter_model_in_keras, chapter_request, printed_summary, wait_for_job

ROOT = Path(__file__).resolve().parent.parent


def errors_of(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    body = response.json()["error"]
    assert body["type"] == "validation_error"
    return {e["path"]: e["message"] for e in body["errors"]}


def test_sigmod_typo_from_the_chapter_gets_a_suggestion(client: TestClient) -> None:
    body = chapter_request()
    body["model"]["layers"][1]["activation"] = "sigmod"
    errors = errors_of(client.post("/train", json=body))
    assert errors == {"model.layers[1].activation": "unknown activation 'sigmod'; did you mean 'sigmoid'?"}


def test_every_problem_is_listed_with_its_path(client: TestClient) -> None:
    body = chapter_request()
    body["model"]["layers"][2]["units"] = 0
    body["model"]["layers"][0] = {"type": "dens", "units": 3}
    body["compile"]["optimizer"] = {"type": "sgd", "momentum": 1.5}
    body["compile"]["metrics"] = ["acuracy"]
    body["fit"]["epochs"] = 0
    body["fit"]["verbose"] = 1
    del body["model"]["input_shape"]
    errors = errors_of(client.post("/train", json=body))
    assert errors["model.layers[0].type"] == "unknown layer type 'dens'; did you mean 'dense'?"
    assert errors["model.layers[2].units"].startswith("Input should be greater than or equal to 1 (received 0)")
    assert errors["compile.optimizer.momentum"] == "Input should be less than 1 (received 1.5)"
    assert errors["compile.metrics[0]"] == "unknown metric 'acuracy'; did you mean 'accuracy'?"
    assert errors["fit.epochs"].startswith("Input should be greater than or equal to 1")
    assert errors["fit.verbose"] == "unknown field 'verbose'"
    assert errors["model.input_shape"] == "field required"
    assert len(errors) == 7


def test_unknown_optimizer_loss_and_dataset_names(client: TestClient) -> None:
    body = chapter_request(optimizer="adamm")
    body["compile"]["loss"] = "sparse_categorical_crossentropi"
    body["dataset"]["name"] = "fashion-mnist"
    errors = errors_of(client.post("/train", json=body))
    assert errors["compile.optimizer.type"] == "unknown optimizer 'adamm'; did you mean 'adam'?"
    assert errors["compile.loss"] == (
        "unknown loss 'sparse_categorical_crossentropi'; did you mean 'sparse_categorical_crossentropy'?"
    )
    assert errors["dataset.name"] == "unknown dataset 'fashion-mnist'; did you mean 'fashion_mnist'?"


def test_malformed_json_is_a_422(client: TestClient) -> None:
    response = client.post("/train", content=b'{"model": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["error"]["message"]


def test_shape_errors_are_caught_before_queueing(client: TestClient) -> None:
    body = chapter_request()
    body["model"]["layers"].insert(0, {"type": "conv2d", "filters": 8})
    errors = errors_of(client.post("/train", json=body))
    assert list(errors) == ["model.layers[0]"]
    assert errors["model.layers[0]"].startswith("conv2d layer cannot take its input of shape [None, 8, 8]")

    body = chapter_request()
    body["model"]["layers"][2]["units"] = 3
    errors = errors_of(client.post("/train", json=body))
    assert errors == {
        "model.layers[2].units": "the last layer has 3 units but dataset 'digits' has 10 classes; set units to 10"
    }

    body = chapter_request()
    body["model"]["input_shape"] = [784]
    errors = errors_of(client.post("/train", json=body))
    assert errors == {
        "model.input_shape": "input_shape [784] does not match dataset 'digits', whose samples have shape [8, 8]"
    }

    body = chapter_request()
    del body["model"]["layers"][0]  # no flatten: Dense on 8×8 keeps a rank-3 output
    errors = errors_of(client.post("/train", json=body))
    assert "a classifier needs (batch, classes)" in errors["model.layers[1].units"]


def test_binary_loss_needs_two_classes_and_one_unit(client: TestClient) -> None:
    body = chapter_request()
    body["compile"]["loss"] = "binary_crossentropy"
    errors = errors_of(client.post("/train", json=body))
    assert "is for two classes but dataset 'digits' has 10" in errors["model.layers[2].units"]


def test_duplicate_layer_names_are_a_422(client: TestClient) -> None:
    body = chapter_request()
    body["model"]["layers"][2]["name"] = "hidden"
    errors = errors_of(client.post("/train", json=body))
    assert "model.layers[2]" in errors
    assert "unique" in errors["model.layers[2]"]


def test_names_may_be_unicode_but_not_contain_a_slash(client: TestClient) -> None:
    body = chapter_request()
    body["model"]["name"] = "패션 MNIST 모델"
    body["model"]["layers"][1]["name"] = "은닉층"
    TrainRequest.model_validate(body)  # accepted
    body["model"]["layers"][1]["name"] = "hidden/1"
    errors = errors_of(client.post("/train", json=body))
    assert errors["model.layers[1].name"] == (
        "names may be any text except '/', which Keras reserves (received 'hidden/1')"
    )


def test_activation_names_are_exactly_keras_own() -> None:
    functions = {name for name in dir(keras.activations) if not name.startswith("_")} - {
        "get",
        "serialize",
        "deserialize",
    }
    assert set(ACTIVATIONS) | set(UNUSABLE_ACTIVATIONS) == functions
    assert not set(ACTIVATIONS) & set(UNUSABLE_ACTIVATIONS)


@pytest.mark.parametrize("activation", sorted(UNUSABLE_ACTIVATIONS))
def test_an_activation_no_layer_can_use_is_refused_with_the_reason(activation: str) -> None:
    """Keras itself fails on these only once the model trains: the request is refused before."""
    body = chapter_request()
    body["model"]["layers"][1]["activation"] = activation
    with pytest.raises(ValidationError) as caught:
        TrainRequest.model_validate(body)
    (error,) = caught.value.errors()
    assert error["loc"] == ("model", "layers", 1, "dense", "activation")
    assert error["msg"].startswith(f"activation {activation!r} cannot be used in a layer: ")


def test_optimizer_shorthand_and_options_build_the_keras_optimizer() -> None:
    spec = CompileSpec.model_validate({"optimizer": "adam", "metrics": "accuracy"})
    assert spec.metrics == ["accuracy"]
    adam = spec.optimizer.build()
    assert isinstance(adam, keras.optimizers.Adam)
    assert float(adam.learning_rate) == pytest.approx(0.001)
    nesterov = CompileSpec.model_validate(
        {"optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True}}
    ).optimizer.build()
    assert isinstance(nesterov, keras.optimizers.SGD)
    assert nesterov.nesterov is True
    assert float(nesterov.momentum) == pytest.approx(0.9)
    assert float(nesterov.learning_rate) == pytest.approx(0.05)
    for optimizer_type in OPTIMIZER_TYPES:
        (name,) = get_args(optimizer_type.model_fields["type"].annotation)
        built = CompileSpec.model_validate({"optimizer": name}).optimizer.build()
        assert type(built).__name__.lower() == name


def test_every_allowed_metric_compiles_and_trains() -> None:
    import numpy as np

    x = np.random.default_rng(0).random((16, 4), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(16) % 3]
    for metric in METRICS:
        if metric.startswith("sparse") or metric.startswith("binary"):
            continue
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        spec = CompileSpec.model_validate({"optimizer": "sgd", "loss": "categorical_crossentropy", "metrics": metric})
        model.compile(optimizer=spec.optimizer.build(), loss=spec.loss, metrics=spec.build_metrics())
        history = model.fit(x, y, epochs=1, verbose=0)
        assert metric in history.history, (metric, list(history.history))


def test_chapter_summary_matches_keras_own() -> None:
    """784 → Dense(100, sigmoid) → Dense(10, softmax): 79,510 parameters, as the chapter's model.summary() shows."""
    body = chapter_request("fashion_mnist", "sigmoid")
    request = TrainRequest.model_validate(body)
    keras.backend.clear_session()
    ours = build_model(request.model)
    theirs = chapter_model_in_keras()
    assert ours.count_params() == theirs.count_params() == 79_510
    assert summarize(ours)["text"] == printed_summary(theirs)


def test_runnable_names() -> None:
    assert runnable_name("hidden") == "hidden"
    assert runnable_name("dense_1") == "dense_1"
    unicode = runnable_name("패션 MNIST 모델")
    assert unicode.startswith("MNIST_")
    assert unicode != runnable_name("패션 MNIST 모델2")
    assert runnable_name("은닉층").startswith("n_")


def test_example_files_are_the_book_examples_and_all_dry_build(client: TestClient) -> None:
    examples = all_examples()
    paths = [p for p in (ROOT / "examples").glob("*.json") if not p.stem.startswith("experiment_")]
    files = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in paths}
    assert files == examples, "regenerate with: python -m service.examples examples"
    assert len(files) == 28
    queued = {}
    for stem, body in files.items():
        request = TrainRequest.model_validate(body)
        if request.dataset.name == "digits":
            response = client.post("/train", json={**body, "fit": {**body["fit"], "epochs": 1}})
            assert response.status_code == 202, (stem, response.text)
            queued[stem] = response.json()["job_id"]
        else:  # fashion_mnist and imdb need Keras' cache: built as the API would, not trained
            dry_build(request, as_requested(builtin_info(request.dataset)[0], request.dataset))
    assert len(queued) == 11
    for stem, job_id in queued.items():
        job = wait_for_job(client, job_id)
        assert job["status"] == "succeeded", (stem, job["error"])


def test_openapi_has_the_chapter_example_and_the_error_shape(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    train = schema["paths"]["/train"]["post"]
    examples = train["requestBody"]["content"]["application/json"]["examples"]
    assert next(iter(examples)) == "digits_relu_adam"
    assert examples["digits_relu_adam"]["value"] == chapter_examples()["digits_relu_adam"]
    assert train["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text


def test_parameter_estimate_equals_keras_count() -> None:
    """Models are sized before any weight is allocated: the estimate must be Keras' own count."""
    from service.keras_build import estimate_params

    bodies = [body["model"] for body in chapter_examples().values()]
    bodies.append(
        {
            "input_shape": [28, 28, 3],
            "layers": [
                {"type": "conv2d", "filters": 8, "kernel_size": [3, 5], "padding": "same"},
                {"type": "batch_normalization", "center": False},
                {"type": "max_pooling2d"},
                {"type": "conv2d", "filters": 4, "kernel_size": 3, "use_bias": False},
                {"type": "batch_normalization"},
                {"type": "flatten"},
                {"type": "dropout", "rate": 0.5},
                {"type": "dense", "units": 7, "use_bias": False},
                {"type": "reshape", "target_shape": [7, 1]},
                {"type": "flatten"},
                {"type": "dense", "units": 3},
            ],
        }
    )
    for body in bodies:
        spec = TrainRequest.model_validate({**chapter_request(), "model": body}).model
        keras.backend.clear_session()
        assert estimate_params(spec) == build_model(spec).count_params()


def test_steps_per_execution_follow_the_model_size() -> None:
    from service.keras_build import AUTO_STEPS_CAP, multiply_adds, plan_steps
    from service.spec import FitSpec

    chapter = TrainRequest.model_validate(chapter_request("fashion_mnist", "sigmoid"))
    dense = build_model(chapter.model)
    assert multiply_adds(dense) == 79_510  # each weight once per sample
    fit = FitSpec(batch_size=32)
    # 6 flops per multiply-add per sample at 5 Gflop/s: 3 ms a step, 81 steps to a quarter of a second
    assert plan_steps(dense, fit, rows=60_000) == 81
    assert plan_steps(dense, FitSpec(batch_size=1), rows=60_000) == AUTO_STEPS_CAP
    assert plan_steps(dense, fit, rows=100) == 4  # never more than an epoch's steps
    assert plan_steps(dense, FitSpec(batch_size=32, validation_split=0.5), rows=1000) == 16
    assert plan_steps(dense, FitSpec(steps_per_execution=5), rows=60_000) == 5

    conv_body = chapter_request("fashion_mnist")
    conv_body["model"]["layers"] = [
        {"type": "reshape", "target_shape": [28, 28, 1]},
        {"type": "conv2d", "filters": 64, "kernel_size": 3, "activation": "relu"},
        {"type": "conv2d", "filters": 64, "kernel_size": 3, "activation": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    conv = build_model(TrainRequest.model_validate(conv_body).model)
    # a convolution's weights are used once per output pixel: 640·26² + 36,928·24² + 368,650
    assert multiply_adds(conv) == 640 * 26 * 26 + 36_928 * 24 * 24 + 368_650
    assert plan_steps(conv, fit, rows=60_000) == 1
