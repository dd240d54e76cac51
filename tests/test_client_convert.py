"""A model written in Keras, read into the request on the client (trainserve.convert): the book's models, and one
of every layer type the spec has, build from their converted specs to the summary Keras prints for the original;
what the spec cannot say (a layer class, an initializer, a regularizer, branches) is refused with the layer's name
and the option. Then the client's own errors, and that importing it loads no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, get_args

import httpx
import keras
import pytest

from service.keras_build import build_model
from service.spec import CALLBACK_TYPES, LAYER_TYPES, OPTIMIZER_TYPES, SCHEDULE_TYPES, ModelSpec
from tests.conftest import chapter_model_in_keras, printed_summary
from tests.test_layers_keras import cnn_in_keras
from trainserve import Client, InvalidRequestError, NotFoundError, UnreachableError, UnsupportedKerasError
from trainserve.convert import callback_spec, compile_spec, loss_spec, metrics_spec, model_spec, optimizer_spec
from trainserve.errors import error_from_response
from trainserve.requests import train_request

layers = keras.layers


def tag(cls: Any) -> str:
    value: str = get_args(cls.model_fields["type"].annotation)[0]
    return value


def book_models() -> dict[str, keras.Model]:
    """The book's models as its notebooks write them, and one model more for the layer types they do not use."""
    keras.backend.clear_session()
    embedding = [keras.Input((100,)), layers.Embedding(500, 16)]
    return {
        "7-2 sigmoid (the chapter)": chapter_model_in_keras(input_shape=(8, 8), name="digits"),
        "7-2 relu": chapter_model_in_keras(input_shape=(8, 8), activation="relu", name="digits relu"),
        "7-3 dropout": keras.Sequential(
            [
                keras.Input((28, 28)),
                layers.Flatten(),
                layers.Dense(100, activation="relu"),
                layers.Dropout(0.3),
                layers.Dense(10, activation="softmax"),
            ]
        ),
        "8-2 cnn": cnn_in_keras((28, 28, 1)),
        "9-2 one-hot simple_rnn": keras.Sequential(
            [keras.Input((100, 500)), layers.SimpleRNN(8), layers.Dense(1, activation="sigmoid")]
        ),
        "9-2 embedding simple_rnn": keras.Sequential(
            [*embedding, layers.SimpleRNN(8), layers.Dense(1, activation="sigmoid")]
        ),
        "9-3 lstm dropout": keras.Sequential(
            [keras.Input((100,)), layers.Embedding(500, 16), layers.LSTM(8, dropout=0.3), layers.Dense(1)]
        ),
        "9-3 two lstm": keras.Sequential(
            [
                keras.Input((100,)),
                layers.Embedding(500, 16),
                layers.LSTM(8, dropout=0.3, return_sequences=True),
                layers.LSTM(8, dropout=0.3),
                layers.Dense(1, activation="sigmoid"),
            ]
        ),
        "9-3 gru": keras.Sequential(
            [keras.Input((100,)), layers.Embedding(500, 16, mask_zero=True), layers.GRU(8), layers.Dense(1)]
        ),
        "bidirectional lstm": keras.Sequential(
            [
                keras.Input((100,)),
                layers.Embedding(500, 16),
                layers.Bidirectional(layers.LSTM(8, return_sequences=True), merge_mode="sum"),
                layers.Bidirectional(layers.GRU(4)),
                layers.Dense(1, activation="sigmoid"),
            ]
        ),
        "the other layers": keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
                layers.BatchNormalization(momentum=0.9),
                layers.AveragePooling2D((2, 2)),
                layers.GlobalMaxPooling2D(keepdims=True),
                layers.GlobalAveragePooling2D(),
                layers.Reshape((4, 2)),
                layers.Conv1D(6, 2, padding="causal", dilation_rate=2, activation="tanh"),
                layers.MaxPooling1D(2),
                layers.AveragePooling1D(1, strides=1),
                layers.GlobalMaxPooling1D(keepdims=True),
                layers.GlobalAveragePooling1D(),
                layers.Dense(3, activation="softmax", use_bias=False),
            ],
            name="의 다른 층들",
        ),
    }


def test_every_spec_class_builds_the_keras_class_it_names() -> None:
    samples: dict[str, dict[str, Any]] = {
        "input": {"shape": [3]},
        "dense": {"units": 2},
        "dropout": {"rate": 0.1},
        "reshape": {"target_shape": [2, 2]},
        "conv2d": {"filters": 2},
        "conv1d": {"filters": 2, "kernel_size": 2},
        "average_pooling2d": {"pool_size": 2},
        "average_pooling1d": {"pool_size": 2},
        "embedding": {"input_dim": 5, "output_dim": 2},
        "simple_rnn": {"units": 2},
        "lstm": {"units": 2},
        "gru": {"units": 2},
        "bidirectional": {"layer": {"type": "lstm", "units": 2}},
        "exponential_decay": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9},
        "piecewise_constant_decay": {"boundaries": [10], "values": [0.1, 0.01]},
        "cosine_decay": {"initial_learning_rate": 0.1, "decay_steps": 10},
    }
    classes: list[Any] = [*LAYER_TYPES, *OPTIMIZER_TYPES, *SCHEDULE_TYPES]
    for cls in classes:
        built = cls.model_validate({"type": tag(cls), **samples.get(tag(cls), {})}).build()
        assert type(built).__name__ == cls.keras_class, cls
        assert type(built).__module__.startswith("keras."), cls
    for callback in CALLBACK_TYPES:
        spec: Any = callback.model_validate({"type": tag(callback)})
        built = spec.build("best.weights.h5") if tag(callback) == "checkpoint" else spec.build()
        assert type(built) is getattr(keras.callbacks, callback.keras_class)


def test_the_book_models_build_from_their_specs_to_the_same_summary() -> None:
    seen: set[str] = set()
    for title, model in book_models().items():
        spec = model_spec(model)
        json.dumps(spec)  # what the request carries
        rebuilt = build_model(ModelSpec.model_validate(spec))
        assert printed_summary(rebuilt) == printed_summary(model), title
        seen |= {layer["type"] for layer in spec["layers"]}
        seen |= {layer["layer"]["type"] for layer in spec["layers"] if layer["type"] == "bidirectional"}
    assert seen == {tag(cls) for cls in LAYER_TYPES} - {"input"}, "every layer type is read from a Keras model"


def test_the_chapter_model_reads_as_the_request_writes_it() -> None:
    model = chapter_model_in_keras(input_shape=(8, 8), activation="relu", name="digits")
    assert model_spec(model) == {
        "name": "digits",
        "input_shape": [8, 8],
        "layers": [
            {"type": "flatten", "name": model.layers[0].name},
            {"type": "dense", "name": "hidden", "units": 100, "activation": "relu"},
            {"type": "dense", "name": "output", "units": 10, "activation": "softmax"},
        ],
    }
    assert "Total params: 7,510" in printed_summary(build_model(ModelSpec.model_validate(model_spec(model))))
    cnn = model_spec(book_models()["8-2 cnn"])
    assert cnn["layers"][0] == {
        "type": "conv2d",
        "name": cnn["layers"][0]["name"],
        "filters": 32,
        "padding": "same",
        "activation": "relu",
    }, "kernel_size 3 as the book writes it, every default left out"


def test_a_functional_plain_stack_is_read_as_a_sequential_one() -> None:
    keras.backend.clear_session()
    inputs = keras.Input((100,))
    x = layers.Embedding(500, 16, mask_zero=True)(inputs)  # Keras adds a mask op beside the stack
    x = layers.LSTM(8)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    functional = keras.Model(inputs, outputs, name="reviews")
    spec = model_spec(functional)
    assert [layer["type"] for layer in spec["layers"]] == ["embedding", "lstm", "dense"]
    rebuilt = build_model(ModelSpec.model_validate(spec))
    assert [(layer.name, layer.count_params()) for layer in rebuilt.layers] == [
        (layer.name, layer.count_params()) for layer in functional.layers if layer.count_params() or layer.weights
    ]
    assert rebuilt.count_params() == functional.count_params()


def refusal(model: Any) -> str:
    with pytest.raises(UnsupportedKerasError) as caught:
        model_spec(model)
    return str(caught.value)


def test_what_the_spec_cannot_say_is_refused_with_the_layer_and_the_option() -> None:
    keras.backend.clear_session()
    he = keras.Sequential(
        [keras.Input((8,)), layers.Dense(4), layers.Dense(4), layers.Dense(3, kernel_initializer="he_normal")]
    )
    assert refusal(he) == (
        "layer 'dense_2' (Dense): kernel_initializer=HeNormal() is not supported here; supported options: units, "
        "activation, use_bias"
    )
    l2 = keras.Sequential(
        [keras.Input((8,)), layers.Dense(4, name="hidden", kernel_regularizer=keras.regularizers.L2(0.01))]
    )
    assert refusal(l2) == (
        "layer 'hidden' (Dense): kernel_regularizer=L2(l2=0.01) is not supported here; supported options: units, "
        "activation, use_bias"
    )
    conv3d = keras.Sequential([keras.Input((4, 4, 4, 1)), layers.Conv3D(2, 3, name="volume")])
    assert refusal(conv3d).startswith(
        "layer 'volume' (Conv3D): Conv3D is not supported here; supported layers: Flatten"
    )
    frozen = keras.Sequential([keras.Input((8,)), layers.Dense(4, name="frozen", trainable=False)])
    assert refusal(frozen).startswith("layer 'frozen' (Dense): trainable=False is not supported here")
    seeded = keras.Sequential(
        [keras.Input((8,)), layers.Dense(4, name="d", kernel_initializer=keras.initializers.GlorotUniform(seed=1))]
    )
    assert refusal(seeded).startswith("layer 'd' (Dense): kernel_initializer.seed=1 is not supported here")
    inner = keras.Sequential(
        [keras.Input((10, 3)), layers.Bidirectional(layers.LSTM(4, recurrent_initializer="zeros"), name="both")]
    )
    assert refusal(inner).startswith("layer 'both' (Bidirectional) layer (LSTM): recurrent_initializer=Zeros() is not")
    glu = keras.Sequential([keras.Input((8,)), layers.Dense(4, activation="glu", name="g")])
    assert refusal(glu).startswith("layer 'g' (Dense): activation='glu': activation 'glu' cannot be used in a layer")
    unbuilt = keras.Sequential([layers.Dense(4)], name="unbuilt")
    assert "model 'unbuilt' has no input shape yet: begin it with keras.Input(shape=...)" in refusal(unbuilt)
    two = keras.Sequential(
        [
            keras.Input((8,)),
            layers.Dense(4, name="a", use_bias=False, bias_regularizer="l1"),
            layers.UnitNormalization(name="b"),
        ]
    )
    lines = refusal(two).splitlines()
    assert lines[0] == "this Keras model cannot be trained here as it is:"
    assert lines[1].startswith("  layer 'a' (Dense): bias_regularizer=L1(l1=0.01) is not supported")
    assert lines[2].startswith("  layer 'b' (UnitNormalization): UnitNormalization is not supported")


def test_a_functional_model_with_branches_is_refused() -> None:
    keras.backend.clear_session()
    inputs = keras.Input((8,))
    wide, deep = layers.Dense(4, name="wide")(inputs), layers.Dense(4, name="deep")(inputs)
    branches = keras.Model(inputs, layers.Concatenate(name="both")([wide, deep]))
    assert "layer 'both' (Concatenate) takes 2 inputs" in refusal(branches)
    assert "the model has branches" in refusal(branches)
    hidden = layers.Dense(8, name="hidden")(inputs)
    residual = keras.Model(inputs, layers.Add(name="skip")([hidden, inputs]))
    assert "layer 'skip' (Add) takes 2 inputs" in refusal(residual)
    two_out = keras.Model(inputs, [layers.Dense(1)(inputs), layers.Dense(2)(inputs)], name="heads")
    assert "model 'heads' has 1 inputs and 2 outputs" in refusal(two_out)


def test_optimizers_schedules_losses_and_metrics_are_read_by_their_classes() -> None:
    assert optimizer_spec(keras.optimizers.Adam()) == {"type": "adam"}
    assert optimizer_spec(keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True)) == {
        "type": "sgd",
        "momentum": 0.9,
        "nesterov": True,
    }
    assert optimizer_spec(keras.optimizers.Adam(learning_rate=3e-4)) == {"type": "adam", "learning_rate": 3e-4}
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=100, decay_rate=0.9)
    assert optimizer_spec(keras.optimizers.RMSprop(learning_rate=schedule)) == {
        "type": "rmsprop",
        "learning_rate": {
            "type": "exponential_decay",
            "initial_learning_rate": 0.01,
            "decay_steps": 100,
            "decay_rate": 0.9,
        },
    }
    for cls in OPTIMIZER_TYPES:
        optimizer = getattr(keras.optimizers, cls.keras_class)()
        assert optimizer_spec(optimizer) == {"type": tag(cls)}, cls
    assert optimizer_spec("adam") == "adam"
    with pytest.raises(UnsupportedKerasError, match=r"^optimizer Adam: clipnorm=1\.0 is not supported here"):
        optimizer_spec(keras.optimizers.Adam(clipnorm=1.0))
    with pytest.raises(UnsupportedKerasError, match=r"^optimizer Lion: Lion is not supported here; supported optim"):
        optimizer_spec(keras.optimizers.Lion())

    assert loss_spec(keras.losses.SparseCategoricalCrossentropy()) == "sparse_categorical_crossentropy"
    assert loss_spec(keras.losses.binary_crossentropy) == "binary_crossentropy"
    with pytest.raises(UnsupportedKerasError, match="from_logits=True is not supported"):
        loss_spec(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert metrics_spec([keras.metrics.SparseCategoricalAccuracy(), "accuracy", keras.metrics.AUC()]) == [
        "sparse_categorical_accuracy",
        "accuracy",
        "auc",
    ]
    with pytest.raises(UnsupportedKerasError, match="metric MeanIoU is not supported"):
        metrics_spec([keras.metrics.MeanIoU(num_classes=2)])


def test_callbacks_are_read_from_their_options() -> None:
    early = keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True, min_delta=0.01, verbose=1)
    assert callback_spec(early) == {
        "type": "early_stopping",
        "patience": 2,
        "restore_best_weights": True,
        "min_delta": 0.01,
    }
    assert callback_spec(keras.callbacks.ModelCheckpoint("best-model.keras", save_best_only=True)) == {
        "type": "checkpoint"
    }
    threshold = keras.callbacks.ModelCheckpoint(
        "b.keras", monitor="val_accuracy", save_best_only=True, initial_value_threshold=0.5
    )
    assert callback_spec(threshold) == {"type": "checkpoint", "monitor": "val_accuracy", "initial_value_threshold": 0.5}
    plateau = keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=3, min_lr=1e-5)
    assert callback_spec(plateau) == {"type": "reduce_lr_on_plateau", "factor": 0.5, "patience": 3, "min_lr": 1e-5}
    spec = {"type": "early_stopping", "patience": 5}
    assert callback_spec(spec) == spec
    with pytest.raises(
        UnsupportedKerasError, match=r"^callback ModelCheckpoint: save_best_only=False is not supported"
    ):
        callback_spec(keras.callbacks.ModelCheckpoint("every-epoch.keras"))
    with pytest.raises(UnsupportedKerasError, match=r"^callback TensorBoard is not supported here"):
        callback_spec(keras.callbacks.TensorBoard())


def test_a_compiled_model_gives_its_compile_options_and_keywords_override_them() -> None:
    model = chapter_model_in_keras(input_shape=(8, 8), activation="relu", name="digits")
    model.compile(
        optimizer=keras.optimizers.SGD(momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=4,
    )
    assert compile_spec(model)["fit"] == {"steps_per_execution": 4}
    body = train_request(
        model,
        dataset={"name": "digits", "rescale": 1 / 16},
        optimizer=None,
        loss=None,
        metrics=None,
        fit={"epochs": 3, "callbacks": [keras.callbacks.EarlyStopping(patience=1)], "batch_size": None},
        name="from keras",
    )
    assert body["compile"] == {
        "optimizer": {"type": "sgd", "momentum": 0.9},
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
    }
    assert body["fit"] == {
        "steps_per_execution": 4,
        "epochs": 3,
        "callbacks": [{"type": "early_stopping", "patience": 1}],
    }
    assert body["name"] == "from keras"
    assert body["dataset"] == {"name": "digits", "rescale": 1 / 16}
    overridden = train_request(model, dataset="digits", optimizer="adam", loss=None, metrics=None, fit={}, name=None)
    assert overridden["compile"]["optimizer"] == "adam"
    assert overridden["dataset"] == {"name": "digits"}

    loose = chapter_model_in_keras(input_shape=(8, 8), name="digits")
    with pytest.raises(ValueError, match="give optimizer="):
        train_request(loose, dataset="digits", optimizer=None, loss=None, metrics=None, fit={}, name=None)
    with pytest.raises(ValueError, match="give the dataset"):
        train_request(loose, dataset=None, optimizer="adam", loss=None, metrics=None, fit={}, name=None)

    request = {
        "model": {"input_shape": [4], "layers": [{"type": "dense", "units": 3}]},
        "compile": {"optimizer": "sgd"},
        "dataset": {"name": "iris"},
        "fit": {"epochs": 50},
    }
    replaced = train_request(
        request, dataset=None, optimizer=keras.optimizers.Adam(), loss=None, metrics=None, fit={"epochs": 2}, name=None
    )
    assert replaced["compile"]["optimizer"] == {"type": "adam"}
    assert replaced["fit"] == {"epochs": 2}
    assert request["fit"] == {"epochs": 50}, "the caller's request is left as it was"


def test_importing_the_client_loads_neither_tensorflow_nor_keras_nor_the_server() -> None:
    probe = (
        "import sys, trainserve, trainserve.convert; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'sqlalchemy', 'fastapi', "
        "'celery', 'matplotlib', 'tqdm'}), 'service.api' in sys.modules, 'service.db' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] False False"


def service_error(status: int, body: Any) -> Any:
    return error_from_response(httpx.Response(status, json=body))


def test_the_services_errors_keep_their_message_and_paths() -> None:
    one = {
        "error": {
            "type": "validation_error",
            "message": "unknown activation 'sigmod'; did you mean 'sigmoid'?",
            "errors": [
                {
                    "path": "model.layers[1].activation",
                    "loc": ["model", "layers", 1, "activation"],
                    "message": "unknown activation 'sigmod'; did you mean 'sigmoid'?",
                }
            ],
        }
    }
    error = service_error(422, one)
    assert isinstance(error, InvalidRequestError)
    assert str(error) == "HTTP 422: model.layers[1].activation: unknown activation 'sigmod'; did you mean 'sigmoid'?"
    assert error.paths == ["model.layers[1].activation"]
    assert error.problems[0].loc == ("model", "layers", 1, "activation")
    two = {
        "error": {
            "type": "validation_error",
            "message": "2 problems",
            "errors": [
                {"path": "fit.epochs", "loc": ["fit", "epochs"], "message": "too many"},
                {"path": "", "loc": [], "message": "x"},
            ],
        }
    }
    assert str(service_error(422, two)) == "HTTP 422: 2 problems\n  fit.epochs: too many\n  (request): x"
    missing = service_error(404, {"error": {"type": "not_found", "message": "no job 'x'", "errors": []}})
    assert isinstance(missing, NotFoundError)
    assert str(missing) == "HTTP 404: no job 'x'"
    assert str(error_from_response(httpx.Response(502, text="bad gateway"))) == "HTTP 502: bad gateway"


def test_an_unreachable_service_is_a_clear_error() -> None:
    with Client("http://127.0.0.1:9", timeout=5) as client, pytest.raises(UnreachableError) as caught:
        client.job("0" * 32)
    assert str(caught.value).startswith("cannot reach TrainServe at http://127.0.0.1:9: ")


def test_the_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINSERVE_URL", "http://example.invalid:8123/")
    monkeypatch.setenv("TRAINSERVE_API_KEY", "s3cret")
    with Client() as client:
        assert client.url == "http://example.invalid:8123"
        assert repr(client) == "Client('http://example.invalid:8123')"
    monkeypatch.delenv("TRAINSERVE_URL")
    with Client() as client:
        assert client.url == "http://127.0.0.1:8000"
