"""The convolutional and recurrent layers (the book's chapters 8 and 9) and the input layer: each spec layer is
the Keras layer a learner's script would write, with Keras' own defaults, parameter count and summary."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, get_args

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.api.errors import invalid_body
from service.datasets.builtin import DatasetInfo
from service.keras_build import (
    SpecError,
    activation_bytes,
    build_model,
    compile_model,
    dry_build,
    estimate,
    multiply_adds,
    runnable_copy,
    summarize,
)
from service.spec import LAYER_TYPES, CompileSpec, Layer, LayerSpec, ModelSpec, TrainRequest
from tests.conftest import chapter_request, printed_summary, train

layers = keras.layers


def cnn(input_shape: list[int]) -> dict[str, Any]:
    """The chapter 8 CNN, as a spec."""
    return {
        "input_shape": input_shape,
        "layers": [
            {"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu", "padding": "same"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "conv2d", "filters": 64, "kernel_size": [3, 3], "activation": "relu", "padding": "same"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 100, "activation": "relu"},
            {"type": "dropout", "rate": 0.4},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ],
    }


def cnn_in_keras(input_shape: tuple[int, ...]) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(32, kernel_size=3, activation="relu", padding="same"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(100, activation="relu"),
            layers.Dropout(0.4),
            layers.Dense(10, activation="softmax"),
        ]
    )


EMBEDDING = {"type": "embedding", "input_dim": 500, "output_dim": 16}
SIGMOID = {"type": "dense", "units": 1, "activation": "sigmoid"}


def sequences(*spec_layers: dict[str, Any], input_shape: list[int] | None = None) -> dict[str, Any]:
    return {"input_shape": input_shape or [100], "layers": [*spec_layers, SIGMOID]}


def sequences_in_keras(*keras_layers: Any, input_shape: tuple[int, ...] = (100,)) -> keras.Sequential:
    return keras.Sequential([keras.Input(shape=input_shape), *keras_layers, layers.Dense(1, activation="sigmoid")])


# Each book model as a spec, and as its script writes it in Keras.
BOOK_MODELS: dict[str, tuple[dict[str, Any], Callable[[], keras.Sequential]]] = {
    "8-2 cnn fashion_mnist": (cnn([28, 28, 1]), lambda: cnn_in_keras((28, 28, 1))),
    "8-2 cnn digits": (cnn([8, 8, 1]), lambda: cnn_in_keras((8, 8, 1))),
    "9-2 one-hot simple_rnn": (
        sequences({"type": "simple_rnn", "units": 8}, input_shape=[100, 500]),
        lambda: sequences_in_keras(layers.SimpleRNN(8), input_shape=(100, 500)),
    ),
    "9-2 embedding simple_rnn": (
        sequences(EMBEDDING, {"type": "simple_rnn", "units": 8}),
        lambda: sequences_in_keras(layers.Embedding(500, 16), layers.SimpleRNN(8)),
    ),
    "9-3 lstm": (
        sequences(EMBEDDING, {"type": "lstm", "units": 8}),
        lambda: sequences_in_keras(layers.Embedding(500, 16), layers.LSTM(8)),
    ),
    "9-3 lstm dropout": (
        sequences(EMBEDDING, {"type": "lstm", "units": 8, "dropout": 0.3}),
        lambda: sequences_in_keras(layers.Embedding(500, 16), layers.LSTM(8, dropout=0.3)),
    ),
    "9-3 two lstm": (
        sequences(
            EMBEDDING,
            {"type": "lstm", "units": 8, "dropout": 0.3, "return_sequences": True},
            {"type": "lstm", "units": 8, "dropout": 0.3},
        ),
        lambda: sequences_in_keras(
            layers.Embedding(500, 16),
            layers.LSTM(8, dropout=0.3, return_sequences=True),
            layers.LSTM(8, dropout=0.3),
        ),
    ),
    "9-3 gru": (
        sequences(EMBEDDING, {"type": "gru", "units": 8}),
        lambda: sequences_in_keras(layers.Embedding(500, 16), layers.GRU(8)),
    ),
    "gru reset_after false, no bias": (
        sequences(EMBEDDING, {"type": "gru", "units": 8, "reset_after": False, "use_bias": False}),
        lambda: sequences_in_keras(layers.Embedding(500, 16), layers.GRU(8, reset_after=False, use_bias=False)),
    ),
    "bidirectional lstm": (
        sequences(EMBEDDING, {"type": "bidirectional", "layer": {"type": "lstm", "units": 8}}),
        lambda: sequences_in_keras(layers.Embedding(500, 16), layers.Bidirectional(layers.LSTM(8))),
    ),
    "bidirectional gru sum, named": (
        sequences(
            EMBEDDING,
            {
                "type": "bidirectional",
                "name": "both_ways",
                "merge_mode": "sum",
                "layer": {"type": "gru", "units": 8, "name": "gru_inside", "return_sequences": True},
            },
            {"type": "global_max_pooling1d"},
        ),
        lambda: sequences_in_keras(
            layers.Embedding(500, 16),
            layers.Bidirectional(
                layers.GRU(8, name="gru_inside", return_sequences=True), merge_mode="sum", name="both_ways"
            ),
            layers.GlobalMaxPooling1D(),
        ),
    ),
    "conv1d and global average pooling": (
        sequences(
            EMBEDDING,
            {"type": "conv1d", "filters": 32, "kernel_size": 5, "activation": "relu", "padding": "causal"},
            {"type": "max_pooling1d"},
            {"type": "conv1d", "filters": 16, "kernel_size": 3, "dilation_rate": 2, "use_bias": False},
            {"type": "average_pooling1d", "pool_size": 3, "strides": 2, "padding": "same"},
            {"type": "global_average_pooling1d"},
        ),
        lambda: sequences_in_keras(
            layers.Embedding(500, 16),
            layers.Conv1D(32, 5, activation="relu", padding="causal"),
            layers.MaxPooling1D(),
            layers.Conv1D(16, 3, dilation_rate=2, use_bias=False),
            layers.AveragePooling1D(3, strides=2, padding="same"),
            layers.GlobalAveragePooling1D(),
        ),
    ),
    "average pooling 2d and global average pooling 2d": (
        {
            "input_shape": [28, 28, 1],
            "layers": [
                {"type": "conv2d", "filters": 8, "kernel_size": 3, "dilation_rate": [2, 1]},
                {"type": "average_pooling2d", "pool_size": [2, 3], "strides": 1},
                {"type": "global_average_pooling2d"},
                {"type": "dense", "units": 10, "activation": "softmax"},
            ],
        },
        lambda: keras.Sequential(
            [
                keras.Input(shape=(28, 28, 1)),
                layers.Conv2D(8, 3, dilation_rate=(2, 1)),
                layers.AveragePooling2D((2, 3), strides=1),
                layers.GlobalAveragePooling2D(),
                layers.Dense(10, activation="softmax"),
            ]
        ),
    ),
    "global max pooling 2d keepdims": (
        {
            "input_shape": [8, 8, 3],
            "layers": [{"type": "global_max_pooling2d", "keepdims": True}, {"type": "flatten"}, SIGMOID],
        },
        lambda: keras.Sequential(
            [
                keras.Input(shape=(8, 8, 3)),
                layers.GlobalMaxPooling2D(keepdims=True),
                layers.Flatten(),
                layers.Dense(1, activation="sigmoid"),
            ]
        ),
    ),
    "embedding mask_zero lstm": (
        sequences({**EMBEDDING, "mask_zero": True}, {"type": "lstm", "units": 8, "recurrent_dropout": 0.2}),
        lambda: sequences_in_keras(layers.Embedding(500, 16, mask_zero=True), layers.LSTM(8, recurrent_dropout=0.2)),
    ),
}


def model_spec(body: dict[str, Any]) -> ModelSpec:
    return TrainRequest.model_validate({**chapter_request(), "model": body}).model


@pytest.mark.parametrize("case", list(BOOK_MODELS))
def test_book_models_are_the_models_keras_builds(case: str) -> None:
    body, in_keras = BOOK_MODELS[case]
    spec = model_spec(body)
    keras.backend.clear_session()
    ours = build_model(spec)
    summary = summarize(ours)
    keras.backend.clear_session()
    theirs = in_keras()
    assert summary["text"] == printed_summary(theirs)
    found = estimate(spec)
    assert found is not None
    assert found.params == theirs.count_params() == ours.count_params() == summary["total_params"]
    # the estimate's output shapes are the built model's (and what recurrent layers keep of their steps on top)
    shapes = [tuple(layer.output.shape) for layer in theirs.layers]
    steps = sum(
        layer.step_values(shape)
        for layer, shape in zip(spec.layers, [(None, *spec.input_shape), *shapes[:-1]], strict=True)
    )
    assert found.activation_bytes == activation_bytes(tuple(spec.input_shape), shapes, steps)


def test_recurrent_parameter_counts() -> None:
    """units·(in + units + 1) for SimpleRNN, four times that for LSTM, three times (one more bias) for GRU."""
    inputs = (None, 100, 16)
    for body, count in [
        ({"type": "simple_rnn", "units": 8}, 8 * (16 + 8 + 1)),
        ({"type": "lstm", "units": 8}, 4 * 8 * (16 + 8 + 1)),
        ({"type": "gru", "units": 8}, 3 * 8 * (16 + 8 + 2)),
        ({"type": "gru", "units": 8, "reset_after": False}, 3 * 8 * (16 + 8 + 1)),
        ({"type": "bidirectional", "layer": {"type": "lstm", "units": 8}}, 2 * 4 * 8 * (16 + 8 + 1)),
    ]:
        (layer,) = model_spec({"input_shape": [100, 16], "layers": [body]}).layers
        assert layer.params(inputs) == count, body


def test_multiply_adds_of_recurrent_layers_and_embeddings() -> None:
    """A recurrent layer's weights are used at every step of its input, whether it returns the sequence or its
    last step; an embedding only looks vectors up."""
    keras.backend.clear_session()
    rnn = build_model(model_spec(BOOK_MODELS["9-2 embedding simple_rnn"][0]))
    assert multiply_adds(rnn) == 100 * 8 * (16 + 8 + 1) + (8 + 1)
    stacked = build_model(model_spec(BOOK_MODELS["9-3 two lstm"][0]))
    assert multiply_adds(stacked) == 100 * 4 * 8 * (16 + 8 + 1) + 100 * 4 * 8 * (8 + 8 + 1) + (8 + 1)
    both_ways = build_model(model_spec(BOOK_MODELS["bidirectional lstm"][0]))
    assert multiply_adds(both_ways) == 100 * 2 * 4 * 8 * (16 + 8 + 1) + (16 + 1)
    conv = build_model(
        model_spec(sequences(EMBEDDING, {"type": "conv1d", "filters": 4, "kernel_size": 5}, {"type": "flatten"}))
    )
    assert multiply_adds(conv) == 96 * 4 * (5 * 16 + 1) + (96 * 4 + 1)


def _without_names(config: Any) -> Any:
    if isinstance(config, dict):
        return {key: _without_names(value) for key, value in config.items() if key != "name"}
    if isinstance(config, list):
        return [_without_names(value) for value in config]
    return config


# Each layer type with only its required options, and the Keras layer with the same arguments.
DEFAULTS: list[tuple[dict[str, Any], Callable[[], Any]]] = [
    ({"type": "conv2d", "filters": 8}, lambda: layers.Conv2D(8, 3)),  # kernel_size 3 when omitted; Keras has none
    ({"type": "conv1d", "filters": 8, "kernel_size": 3}, lambda: layers.Conv1D(8, 3)),
    ({"type": "max_pooling2d"}, lambda: layers.MaxPooling2D()),
    ({"type": "average_pooling2d", "pool_size": 2}, lambda: layers.AveragePooling2D(2)),
    ({"type": "max_pooling1d"}, lambda: layers.MaxPooling1D()),
    ({"type": "average_pooling1d", "pool_size": 2}, lambda: layers.AveragePooling1D(2)),
    ({"type": "global_average_pooling1d"}, lambda: layers.GlobalAveragePooling1D()),
    ({"type": "global_max_pooling1d"}, lambda: layers.GlobalMaxPooling1D()),
    ({"type": "global_average_pooling2d"}, lambda: layers.GlobalAveragePooling2D()),
    ({"type": "global_max_pooling2d"}, lambda: layers.GlobalMaxPooling2D()),
    ({"type": "embedding", "input_dim": 500, "output_dim": 16}, lambda: layers.Embedding(500, 16)),
    ({"type": "simple_rnn", "units": 8}, lambda: layers.SimpleRNN(8)),
    ({"type": "lstm", "units": 8}, lambda: layers.LSTM(8)),
    ({"type": "gru", "units": 8}, lambda: layers.GRU(8)),
    ({"type": "bidirectional", "layer": {"type": "gru", "units": 8}}, lambda: layers.Bidirectional(layers.GRU(8))),
]


@pytest.mark.parametrize(("body", "in_keras"), DEFAULTS, ids=[body["type"] for body, _ in DEFAULTS])
def test_defaults_are_keras_own(body: dict[str, Any], in_keras: Callable[[], Any]) -> None:
    (layer,) = model_spec({"input_shape": [4], "layers": [body]}).layers
    assert _without_names(layer.build().get_config()) == _without_names(in_keras().get_config())


def test_every_layer_type_is_in_the_union() -> None:
    def concrete(cls: type[LayerSpec]) -> set[type[LayerSpec]]:
        found = set()
        for sub in cls.__subclasses__():
            if "type" in sub.model_fields:
                found.add(sub)
            found |= concrete(sub)
        return found

    union = set(get_args(get_args(Layer)[0]))
    assert set(LAYER_TYPES) == union == concrete(LayerSpec)
    tags = [get_args(cls.model_fields["type"].annotation)[0] for cls in LAYER_TYPES]
    assert len(set(tags)) == len(tags)


def shape_problem(body: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    spec = model_spec(body)
    found = estimate(spec)
    assert found is not None
    assert not found.complete  # no shape to work out: building the model says why
    keras.backend.clear_session()
    with pytest.raises(SpecError) as caught:
        build_model(spec)
    (problem,) = caught.value.problems
    return problem


def test_shape_errors_name_the_layer_and_what_it_takes() -> None:
    assert shape_problem({"input_shape": [100, 16], "layers": [{"type": "flatten"}, {"type": "lstm", "units": 8}]}) == (
        ("model", "layers", 1),
        "lstm layer cannot take its input of shape [None, 1600]: it takes 3-D inputs (batch, steps, features); "
        "this one is 2-D",
    )
    assert shape_problem({"input_shape": [100, 16], "layers": [{"type": "global_average_pooling2d"}]}) == (
        ("model", "layers", 0),
        "global_average_pooling2d layer cannot take its input of shape [None, 100, 16]: it takes 4-D inputs "
        "(batch, height, width, channels); this one is 3-D",
    )
    assert shape_problem({"input_shape": [100], "layers": [{"type": "conv2d", "filters": 8}]}) == (
        ("model", "layers", 0),
        "conv2d layer cannot take its input of shape [None, 100]: it takes 4-D inputs "
        "(batch, height, width, channels); this one is 2-D",
    )
    path, message = shape_problem(
        {"input_shape": [100], "layers": [{"type": "bidirectional", "layer": {"type": "gru", "units": 2}}]}
    )
    assert path == ("model", "layers", 0)
    assert message.startswith("bidirectional layer cannot take its input of shape [None, 100]: it takes 3-D")
    assert shape_problem(
        {"input_shape": [8, 8, 1], "layers": [{"type": "conv1d", "filters": 4, "kernel_size": 3}]}
    ) == (
        ("model", "layers", 0),
        "conv1d layer cannot take its input of shape [None, 8, 8, 1]: it takes 3-D inputs (batch, steps, features); "
        "this one is 4-D",
    )
    assert shape_problem({"input_shape": [100], "layers": [EMBEDDING, {"type": "max_pooling2d"}]}) == (
        ("model", "layers", 1),
        "max_pooling2d layer cannot take its input of shape [None, 100, 16]: it takes 4-D inputs "
        "(batch, height, width, channels); this one is 3-D",
    )


def test_a_pool_longer_than_the_sequence_is_keras_own_message_without_its_decoration() -> None:
    spec = model_spec({"input_shape": [3, 2], "layers": [{"type": "max_pooling1d", "pool_size": 5}]})
    keras.backend.clear_session()
    with pytest.raises(SpecError) as caught:
        build_model(spec)
    ((path, message),) = caught.value.problems
    assert path == ("model", "layers", 0)
    assert message.startswith(
        "max_pooling1d layer cannot take its input of shape [None, 3, 2]: Computed output size would be zero or "
        "negative"
    )
    assert "\x1b" not in message


def test_options_keras_refuses_together_are_refused_with_the_path() -> None:
    body = {**chapter_request(), "model": cnn([8, 8, 1])}
    body["model"]["layers"][2] = {"type": "conv2d", "filters": 8, "strides": 2, "dilation_rate": 2}
    with pytest.raises(ValidationError) as caught:
        TrainRequest.model_validate(body)
    (item,) = invalid_body(caught.value, body).errors
    assert (item.path, item.message) == (
        "model.layers[2]",
        "strides above 1 cannot be combined with dilation_rate above 1 (Keras takes one or the other)",
    )


def test_a_wrapped_layer_is_named_as_tensorflow_runs_it() -> None:
    body = {
        **chapter_request(),
        "model": sequences(
            EMBEDDING,
            {"type": "bidirectional", "name": "양방향 층", "layer": {"type": "lstm", "units": 4, "name": "은닉"}},
        ),
    }
    with pytest.raises(ValidationError) as caught:
        TrainRequest.model_validate(body)
    (item,) = invalid_body(caught.value, body).errors
    assert item.path == "model.layers[1].layer.name"
    assert "TensorFlow runs it as 'forward_은닉' and 'backward_은닉'" in item.message
    # the wrapper itself may have any name: it is trained under a runnable one
    del body["model"]["layers"][1]["layer"]["name"]
    spec = TrainRequest.model_validate(body).model
    keras.backend.clear_session()
    display = build_model(spec)
    assert display.layers[1].name == "양방향 층"
    runnable = runnable_copy(spec, display)
    assert runnable(np.ones((2, 100), dtype=np.float32)).shape == (2, 1)


def test_the_new_layers_train() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 500, size=(16, 100)).astype(np.float32)
    x[:, 80:] = 0  # padding, skipped by the masked model
    y = (np.arange(16) % 2).astype(np.float32).reshape(-1, 1)
    compile_spec = CompileSpec.model_validate({"optimizer": "adam", "loss": "binary_crossentropy"})
    for case in ("embedding mask_zero lstm", "bidirectional gru sum, named"):
        keras.backend.clear_session()
        model = build_model(model_spec(BOOK_MODELS[case][0]))
        compile_model(model, compile_spec)
        history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        assert np.isfinite(history.history["loss"][0]), case


# --- the input layer ------------------------------------------------------------------------------------------


def with_input_layer(body: dict[str, Any]) -> dict[str, Any]:
    model = {key: value for key, value in body.items() if key != "input_shape"}
    return {**model, "layers": [{"type": "input", "shape": body["input_shape"]}, *body["layers"]]}


def test_an_input_layer_is_the_model_input_shape() -> None:
    body, in_keras = BOOK_MODELS["8-2 cnn digits"]
    spec = model_spec(with_input_layer(body))
    assert spec.input_shape == [8, 8, 1]
    assert [layer.type for layer in spec.layers] == [layer["type"] for layer in body["layers"]]
    keras.backend.clear_session()
    text = summarize(build_model(spec))["text"]
    keras.backend.clear_session()
    assert text == printed_summary(in_keras())
    assert estimate(spec) == estimate(model_spec(body))
    # what a job records, and the worker validates again
    again = ModelSpec.model_validate(spec.model_dump(mode="json"))
    assert again.model_dump() == spec.model_dump() == model_spec(body).model_dump()


def user_errors(model: dict[str, Any]) -> dict[str, str]:
    body = {**chapter_request(), "model": model}
    with pytest.raises(ValidationError) as caught:
        TrainRequest.model_validate(body)
    return {item.path: item.message for item in invalid_body(caught.value, body).errors}


def test_the_input_is_given_once_and_first() -> None:
    body = with_input_layer(cnn([8, 8, 1]))
    assert user_errors({**body, "input_shape": [8, 8, 1]}) == {
        "model.input_shape": "give input_shape or a first layer of type 'input', not both"
    }
    neither = {"layers": body["layers"][1:]}
    assert user_errors(neither) == {"model.input_shape": "field required"}
    later = {"input_shape": [8, 8, 1], "layers": [*body["layers"][1:3], body["layers"][0], *body["layers"][3:]]}
    assert user_errors(later) == {
        "model.layers[2]": "an input layer can only be the first layer: it is the model's input, as keras.Input"
    }
    assert user_errors({"layers": body["layers"][:1]}) == {
        "model.layers": "the input layer needs at least one layer after it"
    }
    # the input layer's own fields are checked where they are
    bad = {"layers": [{"type": "input", "shape": [8, 0], "name": "pixels"}, *body["layers"][1:]]}
    bad["layers"][1]["filters"] = 0
    errors = user_errors(bad)
    assert set(errors) == {"model.layers[0].shape[1]", "model.layers[0].name", "model.layers[1].filters"}
    assert errors["model.layers[0].name"] == "the input takes no name: the summary does not show it (received 'pixels')"


def test_error_paths_point_into_the_request_as_given() -> None:
    """A request that begins with an input layer has its layers one further on than the spec's ``layers``."""
    keras.backend.clear_session()
    with pytest.raises(SpecError) as caught:
        build_model(
            model_spec(
                with_input_layer(
                    {"input_shape": [100, 16], "layers": [{"type": "flatten"}, {"type": "lstm", "units": 8}]}
                )
            )
        )
    assert [path for path, _ in caught.value.problems] == [("model", "layers", 2)]

    digits = DatasetInfo("digits", "scikit-learn", (8, 8, 1), 10, None, "digits", 1797)
    request = TrainRequest.model_validate({**chapter_request(), "model": with_input_layer(cnn([8, 8, 1]))})
    request.model.layers[-1] = request.model.layers[-1].model_copy(update={"units": 3})
    with pytest.raises(SpecError) as caught:
        dry_build(request, digits)
    assert [path for path, _ in caught.value.problems] == [("model", "layers", 8, "units")]

    request = TrainRequest.model_validate({**chapter_request(), "model": with_input_layer(cnn([8, 8, 2]))})
    with pytest.raises(SpecError) as caught:
        dry_build(request, digits)
    assert [path for path, _ in caught.value.problems] == [("model", "layers", 0, "shape")]


def test_a_sequence_output_is_refused_with_what_ends_a_sequence_model() -> None:
    digits = DatasetInfo("words", "upload", (100,), 2, None, "words", 100)
    body = {**chapter_request(), "model": {"input_shape": [100], "layers": [EMBEDDING, {"type": "dense", "units": 1}]}}
    body["compile"]["loss"] = "binary_crossentropy"
    with pytest.raises(SpecError) as caught:
        dry_build(TrainRequest.model_validate(body), digits)
    ((path, message),) = caught.value.problems
    assert path == ("model", "layers", 1, "units")
    assert message.startswith("the model's output has shape [None, 100, 1]; a classifier needs (batch, classes)")
    assert "global pooling layer" in message


def test_the_schema_says_where_the_input_goes() -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    validator = jsonschema_rs.Draft202012Validator(TrainRequest.model_json_schema())
    base = chapter_request()
    body = with_input_layer(cnn([8, 8, 1]))
    assert validator.is_valid({**base, "model": body})
    assert validator.is_valid({**base, "model": cnn([8, 8, 1])})
    assert not validator.is_valid({**base, "model": {**body, "input_shape": [8, 8, 1]}})
    assert not validator.is_valid({**base, "model": {"layers": body["layers"][1:]}})
    assert not validator.is_valid({**base, "model": {"layers": body["layers"][:1]}})
    later = {"input_shape": [8, 8, 1], "layers": [body["layers"][1], body["layers"][0]]}
    assert not validator.is_valid({**base, "model": later})


# --- in the worker ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_new_layer_family_trains_in_the_worker(client: TestClient) -> None:
    """Convolutions and pooling in one and two dimensions, global pooling and a bidirectional recurrent layer,
    trained by the real worker on digits (as 8×8×1 images, and as 8 steps of 8 features); embeddings and the other
    recurrent layers train in tests/test_text.py."""
    images: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "average_pooling2d", "pool_size": 2},
        {"type": "conv2d", "filters": 8, "kernel_size": [3, 3], "padding": "same", "dilation_rate": 2},
        {"type": "global_average_pooling2d"},
    ]
    images_max: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 8, "kernel_size": 3},
        {"type": "global_max_pooling2d"},
    ]
    steps: list[dict[str, Any]] = [
        {"type": "conv1d", "filters": 16, "kernel_size": 3, "padding": "causal", "activation": "relu"},
        {"type": "max_pooling1d", "pool_size": 2},
        {"type": "average_pooling1d", "pool_size": 2},
        {"type": "bidirectional", "layer": {"type": "gru", "units": 8, "return_sequences": True}},
        {"type": "global_max_pooling1d"},
    ]
    cases: list[tuple[list[dict[str, Any]], list[int] | None]] = [
        (images, [8, 8, 1]),
        (images_max, [8, 8, 1]),
        (steps, None),
    ]
    for layers, reshape in cases:
        body = chapter_request(epochs=2)
        body["model"] = {
            "input_shape": reshape or [8, 8],
            "layers": [*layers, {"type": "dense", "units": 10, "activation": "softmax"}],
        }
        if reshape:
            body["dataset"]["reshape"] = reshape
        job = train(client, body)
        assert job["status"] == "succeeded", (layers, job["error"])
        summary = client.get(f"/models/{job['model_id']}/summary").json()
        # Keras' class of each: conv1d is Conv1D, global_max_pooling1d is GlobalMaxPooling1D, …
        expected = [re.sub(r"(\d)d$", r"\1D", layer["type"].title().replace("_", "")) for layer in layers]
        assert [layer["type"] for layer in summary["layers"]][:-1] == expected


def test_what_recurrent_layers_keep_of_every_step_counts_against_the_memory_limit() -> None:
    """An LSTM over long sequences keeps its four gates and its state at every step for the backward pass: far more
    than its output, and refused at the batch size before any of it is allocated."""
    from service.datasets.catalogue import as_requested, builtin_info
    from service.keras_build import MemoryLimits, SpecError, dry_build

    body = {
        **chapter_request(),
        "model": {
            "input_shape": [20_000],
            "layers": [
                {"type": "embedding", "input_dim": 500, "output_dim": 16},
                {"type": "bidirectional", "layer": {"type": "lstm", "units": 256}},
                {"type": "dense", "units": 1, "activation": "sigmoid"},
            ],
        },
        "compile": {"optimizer": "rmsprop", "loss": "binary_crossentropy"},
        "dataset": {"name": "imdb", "num_words": 500, "maxlen": 20_000},
    }
    request = TrainRequest.model_validate(body)
    spec = request.model
    found = estimate(spec)
    assert found is not None
    outputs_only = 4 * (20_000 + 20_000 * 16 + 512 + 1)
    kept = 4 * 2 * 20_000 * 256 * 5  # both directions: every step's four gates and its state
    assert found.activation_bytes == outputs_only + kept
    info = as_requested(builtin_info(request.dataset)[0], request.dataset)
    with pytest.raises(SpecError) as refused:
        dry_build(request, info, memory=MemoryLimits(max_activation_bytes=2**30, max_training_data_bytes=2**34))
    assert [path for path, _ in refused.value.problems] == [("fit", "batch_size")]
