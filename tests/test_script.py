"""GET /jobs/{job_id}/script: the job as the plain Keras script a learner would write. Run as it is, the script of a
seeded job reports the job's numbers: every epoch's loss and metrics and the evaluation, to 1e-6."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import script
from service.examples import all_examples
from service.settings import Settings
from service.spec import (
    CALLBACK_TYPES,
    LAYER_TYPES,
    OPTIMIZER_TYPES,
    SCHEDULE_TYPES,
    CheckpointCallback,
    TrainRequest,
)
from tests.conftest import chapter_request, train
from tests.datafiles import blobs, csv_bytes, npz_bytes, upload

# Job and script agree to this: the same arithmetic in the same order gives the same float32 numbers, which the
# job records as doubles.
TOLERANCE = 1e-6

# --- every layer, optimizer, schedule and callback renders as Keras builds it -----------------------------------

# One layer of each type with options away from their defaults, and the input it takes.
LAYER_SAMPLES: list[tuple[list[int], dict[str, Any]]] = [
    ([8, 8], {"type": "flatten", "name": "flat"}),
    ([8], {"type": "dense", "units": 5, "activation": "relu", "use_bias": False, "name": "은닉층"}),
    ([8], {"type": "dropout", "rate": 0.25, "seed": 7}),
    ([8, 8], {"type": "reshape", "target_shape": [-1, 4]}),
    ([8, 8, 1], {"type": "conv2d", "filters": 4, "kernel_size": [3, 2], "strides": 2, "padding": "same"}),
    ([8, 8, 1], {"type": "conv2d", "filters": 4, "dilation_rate": 2, "activation": "relu", "use_bias": False}),
    ([10, 3], {"type": "conv1d", "filters": 4, "kernel_size": 3, "padding": "causal", "dilation_rate": 2}),
    ([10, 3], {"type": "conv1d", "filters": 2, "kernel_size": 2, "strides": 2, "activation": "tanh"}),
    ([8, 8, 1], {"type": "max_pooling2d", "pool_size": [2, 3], "strides": 1, "padding": "same"}),
    ([8, 8, 1], {"type": "average_pooling2d", "pool_size": 2}),
    ([10, 3], {"type": "max_pooling1d", "pool_size": 3, "strides": 2}),
    ([10, 3], {"type": "average_pooling1d", "pool_size": 2, "padding": "same"}),
    ([10, 3], {"type": "global_average_pooling1d", "keepdims": True}),
    ([10, 3], {"type": "global_max_pooling1d"}),
    ([8, 8, 1], {"type": "global_average_pooling2d"}),
    ([8, 8, 1], {"type": "global_max_pooling2d", "keepdims": True}),
    ([8], {"type": "batch_normalization", "momentum": 0.9, "epsilon": 0.01, "center": False}),
    ([10], {"type": "embedding", "input_dim": 50, "output_dim": 4, "mask_zero": True}),
    ([10, 3], {"type": "simple_rnn", "units": 4, "return_sequences": True, "dropout": 0.1, "seed": 3}),
    ([10, 3], {"type": "lstm", "units": 4, "recurrent_activation": "hard_sigmoid", "recurrent_dropout": 0.2}),
    ([10, 3], {"type": "gru", "units": 4, "reset_after": False, "activation": "relu"}),
    ([10, 3], {"type": "bidirectional", "layer": {"type": "lstm", "units": 4}}),
    (
        [10, 3],
        {
            "type": "bidirectional",
            "layer": {"type": "gru", "units": 3, "return_sequences": True, "name": "enc"},
            "merge_mode": "sum",
            "name": "both ways",
        },
    ),
]
OPTIMIZER_SAMPLES: list[Any] = [
    "adam",
    {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
    {"type": "adagrad", "learning_rate": 0.02, "initial_accumulator_value": 0.2, "epsilon": 1e-6},
    {"type": "rmsprop", "rho": 0.8, "momentum": 0.5, "centered": True},
    {"type": "adam", "learning_rate": 0.0005, "beta_1": 0.8, "amsgrad": True},
    {"type": "adamw", "weight_decay": 0.01, "beta_2": 0.99},
    {"type": "adamax", "learning_rate": 0.003},
    {"type": "nadam", "epsilon": 1e-5},
    {"type": "adadelta", "learning_rate": 1.0, "rho": 0.9},
]
SCHEDULE_SAMPLES: list[dict[str, Any]] = [
    {"type": "exponential_decay", "initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9},
    {
        "type": "exponential_decay",
        "initial_learning_rate": 0.1,
        "decay_steps": 10,
        "decay_rate": 0.9,
        "staircase": True,
    },
    {"type": "piecewise_constant_decay", "boundaries": [100, 200], "values": [0.1, 0.01, 0.001]},
    {"type": "cosine_decay", "initial_learning_rate": 0.1, "decay_steps": 100, "alpha": 0.1},
    {
        "type": "cosine_decay",
        "initial_learning_rate": 0.0,
        "decay_steps": 100,
        "warmup_target": 0.1,
        "warmup_steps": 10,
    },
]
CALLBACK_SAMPLES: list[dict[str, Any]] = [
    {"type": "early_stopping"},
    {
        "type": "early_stopping",
        "monitor": "val_accuracy",
        "mode": "max",
        "min_delta": 0.01,
        "patience": 2,
        "baseline": 0.5,
        "restore_best_weights": True,
        "start_from_epoch": 1,
    },
    {"type": "checkpoint"},
    {"type": "checkpoint", "monitor": "val_accuracy", "mode": "max", "initial_value_threshold": 0.9},
    {"type": "reduce_lr_on_plateau"},
    {
        "type": "reduce_lr_on_plateau",
        "monitor": "loss",
        "factor": 0.5,
        "patience": 1,
        "min_delta": 0.001,
        "cooldown": 2,
        "min_lr": 1e-5,
    },
]


def _types(cls: type) -> str:
    annotation = cls.model_fields["type"].annotation  # type: ignore[attr-defined]
    return str(annotation.__args__[0])


def test_the_samples_cover_every_type_the_spec_has() -> None:
    """A type added to the spec needs a sample above, so that its rendering is checked."""
    assert {_types(cls) for cls in LAYER_TYPES} - {"input"} == {layer["type"] for _, layer in LAYER_SAMPLES}
    covered = {o if isinstance(o, str) else o["type"] for o in OPTIMIZER_SAMPLES}
    assert {_types(cls) for cls in OPTIMIZER_TYPES} == covered
    assert {_types(cls) for cls in SCHEDULE_TYPES} == {s["type"] for s in SCHEDULE_SAMPLES}
    assert {_types(cls) for cls in CALLBACK_TYPES} == {c["type"] for c in CALLBACK_SAMPLES}


def _request(input_shape: list[int] | None, layers: list[dict[str, Any]], **parts: Any) -> TrainRequest:
    model: dict[str, Any] = {"layers": layers} | ({} if input_shape is None else {"input_shape": input_shape})
    body: dict[str, Any] = {
        "model": model,
        "compile": {"optimizer": "adam"},
        "dataset": {"name": "digits"},
        "fit": {"epochs": 1},
    }
    for part, value in parts.items():
        body[part] = {**body.get(part, {}), **value}
    return TrainRequest.model_validate(body)


def _compiles(text: str) -> None:
    compile(text, "job.py", "exec")


def _same_config(rendered: Any, built: Any) -> None:
    assert type(rendered) is type(built)
    assert script.comparable({**rendered.get_config(), "name": None}) == script.comparable(
        {**built.get_config(), "name": None}
    )


@pytest.mark.parametrize(("input_shape", "layer"), LAYER_SAMPLES, ids=lambda value: str(value))
def test_every_layer_renders_as_the_call_that_builds_it(input_shape: list[int], layer: dict[str, Any]) -> None:
    request = _request(input_shape, [layer])
    text = script.render(request, execution=None, dataset_url=None)
    _compiles(text)
    spec = request.model.layers[0]
    from service.keras_build import runnable_name

    name = None if spec.name is None else runnable_name(spec.name)
    source = script.layer_call(spec, name).text()
    assert f"model.add({source})" in text or source.replace("\n", "\n    ") in text
    built = eval(source, {"keras": keras})  # the script's own text, evaluated
    _same_config(built, spec.build())
    first = script.required_parameters(type(built))[:1]
    for option in set(layer) - {"type", "name", "layer"}:
        assert option in first or f"{option}=" in source, f"{option} is written out"
    if name is not None:
        assert built.name == name
        if name != spec.name:
            assert f"# {spec.name}" in text, "the user's own name is shown beside the one TensorFlow runs under"
    else:
        assert "name=" not in source, "Keras names it, as it named the job's layer"


def test_an_input_layer_is_the_models_input() -> None:
    request = _request(None, [{"type": "input", "shape": [8, 8]}, {"type": "flatten"}])
    text = script.render(request, execution=None, dataset_url=None)
    _compiles(text)
    assert "model.add(keras.Input(shape=(8, 8)))\nmodel.add(keras.layers.Flatten())\n" in text


def _optimizer_text(text: str) -> str:
    """The source of compile()'s optimizer argument."""
    start = text.index("optimizer=") + len("optimizer=")
    depth = 0
    for end, char in enumerate(text[start:], start):
        depth += char in "([{"
        depth -= char in ")]}"
        if (char == "," and depth == 0) or depth < 0:
            return text[start:end]
    raise AssertionError("compile() has no optimizer argument")


@pytest.mark.parametrize(
    "optimizer",
    OPTIMIZER_SAMPLES
    + [{"type": "sgd", "learning_rate": schedule} for schedule in SCHEDULE_SAMPLES]
    + [{"type": "adam", "learning_rate": SCHEDULE_SAMPLES[2]}],
    ids=lambda value: json.dumps(value),
)
def test_every_optimizer_and_schedule_renders_as_the_call_that_builds_it(optimizer: Any) -> None:
    request = _request([8, 8], [{"type": "flatten"}, {"type": "dense", "units": 10}], compile={"optimizer": optimizer})
    text = script.render(request, execution=None, dataset_url=None)
    _compiles(text)
    source = _optimizer_text(text)
    rendered = eval(source, {"keras": keras})
    if isinstance(rendered, str):
        assert optimizer == rendered, "a default optimizer is named as compile() takes it"
        rendered = keras.optimizers.get(rendered)
    built = request.compile.optimizer.build()
    assert type(rendered) is type(built)
    assert {**rendered.get_config(), "name": None} == {**built.get_config(), "name": None}
    assert "0.009999999776482582" not in source, "learning rates are written as given"


@pytest.mark.parametrize("callback", CALLBACK_SAMPLES, ids=lambda value: json.dumps(value))
def test_every_callback_renders_as_the_call_that_builds_it(callback: dict[str, Any]) -> None:
    request = _request(
        [8, 8],
        [{"type": "flatten"}, {"type": "dense", "units": 10}],
        fit={"validation_split": 0.2, "callbacks": [callback]},
    )
    text = script.render(request, execution=None, dataset_url=None)
    _compiles(text)
    spec = request.fit.callbacks[0]
    variable = f"{spec.type}_cb = "
    start = text.index(variable) + len(variable)
    source = text[start : text.index("\n\n", start)]
    rendered = eval(source, {"keras": keras})
    if isinstance(spec, CheckpointCallback):
        built = spec.build(script.CHECKPOINT_FILE)
        assert f'model.load_weights("{script.CHECKPOINT_FILE}")' in text
    else:
        built = spec.build()
    assert type(rendered) is type(built)
    assert {k: v for k, v in vars(rendered).items() if not callable(v)} == {
        k: v for k, v in vars(built).items() if not callable(v)
    }
    assert f"callbacks=[{spec.type}_cb]" in text


def test_the_metrics_keep_their_names_and_the_execution_its_steps() -> None:
    request = _request(
        [30],
        [{"type": "dense", "units": 1, "activation": "sigmoid"}],
        compile={"loss": "binary_crossentropy", "metrics": ["accuracy", "auc", "precision", "recall"]},
        dataset={"name": "breast_cancer", "test_size": 0.25, "random_state": 3, "stratify": True},
        fit={"jit_compile": True},
    )
    text = script.render(request, execution={"steps_per_execution": 12, "jit_compile": True}, dataset_url=None)
    _compiles(text)
    assert (
        'metrics=["accuracy", keras.metrics.AUC(name="auc"), keras.metrics.Precision(name="precision"), '
        'keras.metrics.Recall(name="recall")]'
    ) in text
    assert "steps_per_execution=12" in text
    assert "jit_compile=True" in text
    assert 'train_target = train_target.astype("float32").reshape(-1, 1)' in text
    assert "random_state=3, stratify=train_target" in text
    assert "from sklearn.datasets import load_breast_cancer" in text


def test_every_builtin_dataset_is_loaded_as_its_library_loads_it() -> None:
    layers: list[dict[str, Any]] = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]
    for name, shape in [("mnist", [28, 28]), ("fashion_mnist", [28, 28]), ("cifar10", [32, 32, 3])]:
        text = script.render(_request(shape, layers, dataset={"name": name}), execution=None, dataset_url=None)
        _compiles(text)
        assert f"keras.datasets.{name}.load_data()" in text
        assert 'test_scaled = test_input.astype("float32")' in text
    imdb = _request(
        [100],
        [{"type": "embedding", "input_dim": 500, "output_dim": 16}, {"type": "flatten"}, *layers[1:]],
        dataset={"name": "imdb", "num_words": 500, "maxlen": 100, "truncating": "post"},
    )
    text = script.render(imdb, execution=None, dataset_url=None)
    _compiles(text)
    assert "keras.datasets.imdb.load_data(num_words=500)" in text
    assert 'train_input = keras.utils.pad_sequences(train_input, maxlen=100, truncating="post")' in text
    text = script.render(
        _request([4], layers[1:], dataset={"name": "iris", "rescale": 0.5}), execution=None, dataset_url=None
    )
    assert "train_input, train_target = iris.data, iris.target" in text


@pytest.mark.parametrize(
    ("rescale", "expression"),
    [
        (None, 'x.astype("float32")'),
        (1 / 16, 'x.astype("float32") / 16.0'),
        (1 / 255, 'x.astype("float32") * np.float32(1 / 255)'),
        (0.1, 'x.astype("float32") * np.float32(0.1)'),
        (2.0, 'x.astype("float32") * np.float32(2.0)'),
    ],
)
def test_the_rescale_is_the_workers_float32_arithmetic(rescale: float | None, expression: str) -> None:
    assert script.rescale_expression("x", rescale) == expression
    rng = np.random.default_rng(0)
    for x in (np.arange(256, dtype=np.uint8), (rng.normal(size=1000) * 100).astype(np.float32)):
        worker = x.astype(np.float32) if rescale is None else x * np.float32(rescale)
        scripted = eval(expression, {"x": x, "np": np})
        assert scripted.dtype == np.float32
        assert np.array_equal(scripted, worker)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The API alone: these answers need no worker."""
    from service.api.app import create_app

    with TestClient(create_app(settings)) as client:
        yield client


def test_the_scripts_file_is_named_after_the_job() -> None:
    from service.api.routers.jobs import attachment

    assert attachment("digits relu + adam", ".py") == 'attachment; filename="digits relu + adam.py"'
    assert (
        attachment('a "quoted" name', ".py")
        == "attachment; filename=\"a _quoted_ name.py\"; filename*=UTF-8''a%20%22quoted%22%20name.py"
    )
    assert attachment("패션 모델", ".py") == (
        "attachment; filename=\"__ __.py\"; filename*=UTF-8''%ED%8C%A8%EC%85%98%20%EB%AA%A8%EB%8D%B8.py"
    )


def test_an_unknown_job_or_dataset_has_no_script_or_file(api: TestClient) -> None:
    response = api.get("/jobs/0123456789abcdef0123456789abcdef/script")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    response = api.get("/datasets/0123456789abcdef0123456789abcdef/download")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    response = api.get("/datasets/digits/download")
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "builtin_dataset"


# --- the oracle: the job's numbers from its script ---------------------------------------------------------------


def _script(client: TestClient, job: dict[str, Any]) -> str:
    response = client.get(f"/jobs/{job['job_id']}/script")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/x-python; charset=utf-8"
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    text: str = response.text
    return text


def _run(text: str, directory: Path, keras_cache: Path) -> dict[str, Any]:
    path = directory / "job.py"
    path.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSERVE_")}
    env |= {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_HOME": str(keras_cache)}
    done = subprocess.run(
        [sys.executable, str(path)], cwd=directory, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    last = next(line for line in reversed(done.stdout.splitlines()) if line.startswith('{"history"'))
    printed: dict[str, Any] = json.loads(last)
    return printed


def _assert_same_numbers(job: dict[str, Any], printed: dict[str, Any]) -> float:
    """Every epoch's loss and metrics, and the evaluation, as the job recorded them; the largest difference."""
    history = printed["history"]
    assert len(history["loss"]) == len(job["history"])
    keys = {key for row in job["history"] for key in row} - {"epoch"}
    if "learning_rate" not in history:
        keys.discard("learning_rate")  # the job records it every epoch; Keras logs it with a plateau callback
    assert keys >= {"loss"}
    assert keys <= set(history)
    largest = 0.0
    for epoch, row in enumerate(job["history"]):
        for key in sorted(keys):
            assert history[key][epoch] == pytest.approx(row[key], abs=TOLERANCE), (epoch + 1, key)
            largest = max(largest, abs(history[key][epoch] - row[key]))
    if job["evaluation"] is None:
        assert printed["evaluation"] is None
    else:
        assert set(printed["evaluation"]) == set(job["evaluation"])
        for key, value in job["evaluation"].items():
            assert printed["evaluation"][key] == pytest.approx(value, abs=TOLERANCE), key
            largest = max(largest, abs(printed["evaluation"][key] - value))
    return largest


def _seven_three() -> dict[str, Any]:
    """7-3: dropout, validation rows held out, the best epoch kept by a checkpoint, early stopping."""
    body = chapter_request(epochs=6)
    body["name"] = "7-3 dropout, checkpoint, early stopping"
    layers = body["model"]["layers"]
    body["model"]["layers"] = [layers[0], layers[1], {"type": "dropout", "rate": 0.3}, layers[2]]
    body["fit"] = {
        "epochs": 6,
        "seed": 42,
        "validation_data": {"size": 0.2, "random_state": 42},
        "callbacks": [
            {"type": "checkpoint"},
            {"type": "early_stopping", "patience": 2, "restore_best_weights": True},
        ],
    }
    return body


def _eight_two() -> dict[str, Any]:
    """8-2: a convolutional network, on digits as 8×8×1 images."""
    body = chapter_request(epochs=3)
    body["name"] = "8-2 cnn"
    body["model"] = {
        "name": "cnn",
        "input_shape": [8, 8],
        "layers": [
            {"type": "reshape", "target_shape": [8, 8, 1]},
            {"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu", "padding": "same"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "conv2d", "filters": 64, "kernel_size": 3, "activation": "relu", "padding": "same"},
            {"type": "flatten"},
            {"type": "dense", "units": 100, "activation": "relu"},
            {"type": "dropout", "rate": 0.4},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ],
    }
    return body


def _eight_two_as_the_book_reshapes() -> dict[str, Any]:
    """8-2 as its notebook does it: the images reshaped to (8, 8, 1) before the model (examples/digits_8_2_cnn)."""
    from service.examples import book_examples

    body = book_examples()["digits_8_2_cnn"]
    body["fit"]["epochs"] = 3
    return body


def _decaying_sgd() -> dict[str, Any]:
    schedule = {"type": "exponential_decay", "initial_learning_rate": 0.1, "decay_steps": 20, "decay_rate": 0.5}
    body = chapter_request(optimizer={"type": "sgd", "learning_rate": schedule, "momentum": 0.9}, epochs=4)
    body["name"] = "sgd with a decaying learning rate"
    return body


def _binary_with_a_plateau() -> dict[str, Any]:
    """breast_cancer, binary: 0/1 labels as a column, precision and recall, a plateau lowering the rate."""
    return {
        "name": "breast cancer",
        "model": {
            "input_shape": [30],
            "layers": [
                {"type": "batch_normalization"},
                {"type": "dense", "units": 16, "activation": "relu"},
                {"type": "dense", "units": 1, "activation": "sigmoid"},
            ],
        },
        "compile": {
            "optimizer": {"type": "rmsprop", "learning_rate": 0.01},
            "loss": "binary_crossentropy",
            "metrics": ["accuracy", "precision", "recall", "auc"],
        },
        "dataset": {"name": "breast_cancer", "test_size": 0.25, "random_state": 7, "stratify": True},
        "fit": {
            "epochs": 5,
            "batch_size": 16,
            "seed": 3,
            "validation_data": "test",
            "callbacks": [{"type": "reduce_lr_on_plateau", "monitor": "val_loss", "patience": 0, "min_delta": 1.0}],
        },
    }


def _relu_adam() -> dict[str, Any]:
    return chapter_request(epochs=5)


def _sigmoid() -> dict[str, Any]:
    return chapter_request(activation="sigmoid", optimizer="rmsprop", epochs=5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "example",
    [
        _relu_adam,
        _sigmoid,
        _seven_three,
        _eight_two,
        _eight_two_as_the_book_reshapes,
        _decaying_sgd,
        _binary_with_a_plateau,
    ],
)
def test_the_script_of_a_seeded_job_reports_its_numbers(
    client: TestClient, tmp_path: Path, keras_cache: Path, example: Any
) -> None:
    """The chapter's examples on digits (and one binary one), trained by the worker (several steps per call into
    TensorFlow, its own training step) and by their script in a new Python: the same numbers."""
    job = train(client, example())
    assert job["status"] == "succeeded", job["error"]
    text = _script(client, job)
    assert "keras.utils.set_random_seed(" in text
    printed = _run(text, tmp_path, keras_cache)
    largest = _assert_same_numbers(job, printed)
    print(f"{example.__name__}: largest difference {largest:.3g}")


@pytest.mark.slow
def test_the_script_of_a_job_on_an_upload_trains_on_its_downloaded_file(
    client: TestClient, tmp_path: Path, keras_cache: Path
) -> None:
    x, y = blobs(240, features=6, classes=3, seed=11)
    content = npz_bytes(x_train=x[:180], y_train=y[:180], x_test=x[180:], y_test=y[180:])
    status, dataset = upload(client, "blobs.npz", content)
    assert status in (200, 201), dataset
    body = {
        "name": "blobs",
        "model": {
            "input_shape": [6],
            "layers": [
                {"type": "dense", "units": 12, "activation": "relu"},
                {"type": "dense", "units": 3, "activation": "softmax"},
            ],
        },
        "compile": {"optimizer": "adam", "loss": "categorical_crossentropy", "metrics": ["accuracy", "auc"]},
        "dataset": {"id": dataset["dataset_id"], "rescale": 0.1},
        "fit": {"epochs": 5, "batch_size": 16, "validation_split": 0.25, "seed": 5},
    }
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    text = _script(client, job)
    assert 'filename="blobs.py"' in client.get(f"/jobs/{job['job_id']}/script").headers["content-disposition"]
    url = f"http://testserver/datasets/{dataset['dataset_id']}/download"
    assert f"curl -o dataset.npz {url}" in text
    download = client.get(url)
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/octet-stream"
    with np.load(io.BytesIO(download.content)) as stored:
        assert sorted(stored.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert np.array_equal(stored["x_train"], x[:180])
    (tmp_path / "dataset.npz").write_bytes(download.content)
    printed = _run(text, tmp_path, keras_cache)
    largest = _assert_same_numbers(job, printed)
    print(f"upload: largest difference {largest:.3g}")


@pytest.mark.slow
def test_the_script_of_a_one_hot_rnn_on_uploaded_texts(client: TestClient, tmp_path: Path, keras_cache: Path) -> None:
    """9-2's first RNN: word indexes of texts tokenized at upload, as one-hot vectors into a SimpleRNN."""
    from tests.test_text import reviews

    content = csv_bytes(["review", "feeling"], reviews(120, seed=4))
    status, dataset = upload(
        client, "reviews.csv", content, text_column="review", label_column="feeling", num_words="16", maxlen="12"
    )
    assert status in (200, 201), dataset
    body = {
        "name": "one-hot rnn",
        "model": {
            "input_shape": [12, 16],
            "layers": [{"type": "simple_rnn", "units": 4}, {"type": "dense", "units": 1, "activation": "sigmoid"}],
        },
        "compile": {"optimizer": {"type": "rmsprop", "learning_rate": 0.01}, "loss": "binary_crossentropy"},
        "dataset": {"id": dataset["dataset_id"], "one_hot": True, "test_size": 0.25, "random_state": 42},
        "fit": {"epochs": 3, "batch_size": 16, "seed": 42, "validation_data": {"size": 0.2, "random_state": 42}},
    }
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    text = _script(client, job)
    assert "keras.utils.to_categorical(train_input, 16)" in text
    (tmp_path / "dataset.npz").write_bytes(client.get(f"/datasets/{dataset['dataset_id']}/download").content)
    printed = _run(text, tmp_path, keras_cache)
    largest = _assert_same_numbers(job, printed)
    print(f"one-hot rnn: largest difference {largest:.3g}")


@pytest.mark.parametrize("stem", sorted(all_examples()))
def test_every_examples_summary_is_the_one_its_plain_keras_prints(stem: str) -> None:
    """Each example's model, built by the service and by the plain Keras its script writes, prints one summary
    (the title aside: the script names the model as TensorFlow runs it)."""
    from service.keras_build import build_model, summarize

    request = TrainRequest.model_validate(all_examples()[stem])
    text = script.render(request, execution=None, dataset_url="http://localhost:8000")
    model_code = text[text.index("model = keras.Sequential") : text.index("model.summary()")]
    keras.backend.clear_session()
    namespace: dict[str, Any] = {"keras": keras}
    exec(model_code, namespace)  # the script's own model-building lines, nothing else
    printed: list[str] = []
    namespace["model"].summary(print_fn=lambda line, **_: printed.append(line))
    keras.backend.clear_session()
    ours = summarize(build_model(request.model))["text"]
    assert "".join(printed).split("\n", 1)[1] == ours.split("\n", 1)[1]
