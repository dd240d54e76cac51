"""A model's compiled call: per padded batch size LiteRT (the model's flatbuffer) or XLA, decided in the background,
the graph otherwise; every answer equal to Keras' own."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.serving import litert
from service.serving.litert import LiteRtModel
from service.serving.model_call import INLINE_SECONDS, ModelCall, buckets_for

RESCALE = 1 / 16


@pytest.fixture(scope="module")
def model() -> Any:
    """Every kind of layer the service builds, with weights that are not their initial ones."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Reshape((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(16, activation="sigmoid"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, 8, 8)), rng.integers(0, 10, 64), epochs=2, verbose=0)
    return model


@pytest.fixture
def compiler() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def keras_answer(model: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(model.predict_on_batch(x * np.float32(RESCALE)))


def batches(*sizes: int) -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(sum(sizes))
    return [rng.integers(0, 17, (size, 8, 8)).astype(np.float32) for size in sizes]


def test_buckets_are_powers_of_two_up_to_the_batch_size() -> None:
    assert buckets_for(64) == [1, 2, 4, 8, 16, 32, 64]
    assert buckets_for(48) == [1, 2, 4, 8, 16, 32, 48]
    assert buckets_for(1) == [1]


def test_padded_xla_calls_answer_as_keras_does(model: Any, compiler: ThreadPoolExecutor) -> None:
    call = ModelCall(model, (8, 8), RESCALE, max_batch_size=8, compiler=compiler, xla="always")
    sizes = (1, 2, 3, 5, 8, 9, 30)
    first = [call(x) for x in batches(*sizes)]
    assert call.calls == {"graph": len(sizes)}  # nothing was compiled yet: the graph answered
    call.settle()
    assert call.choices == {1: "xla", 2: "xla", 4: "xla", 8: "xla"}  # 9 and 30 are beyond the buckets
    for x, before in zip(batches(*sizes), first, strict=True):
        answer = call(x)
        assert answer.shape == (len(x), 10)
        assert np.allclose(answer, keras_answer(model, x), atol=1e-5)
        assert np.allclose(answer, before, atol=1e-5)
    assert call.calls == {"graph": len(sizes) + 2, "xla": 5}


def test_auto_keeps_the_faster_call_per_batch_size(model: Any, compiler: ThreadPoolExecutor) -> None:
    call = ModelCall(model, (8, 8), RESCALE, max_batch_size=4, compiler=compiler, xla="auto")
    for x in batches(1, 2, 4):
        call(x)
    call.settle()
    assert set(call.choices) == {1, 2, 4}
    for x in batches(1, 2, 3, 4):
        assert np.allclose(call(x), keras_answer(model, x), atol=1e-5)


def test_never_compiles_nothing(model: Any, compiler: ThreadPoolExecutor) -> None:
    call = ModelCall(model, (8, 8), RESCALE, max_batch_size=4, compiler=compiler, xla="never")
    for x in batches(1, 3, 9):
        assert np.allclose(call(x), keras_answer(model, x), atol=1e-5)
    call.settle()
    assert call.choices == {}
    assert call.calls == {"graph": 3}


def test_a_model_xla_cannot_compile_keeps_the_graph(compiler: ThreadPoolExecutor) -> None:
    """A NumPy function inside the model is no XLA op: the bucket falls back to the graph, which still answers."""
    import keras
    import tensorflow as tf

    def numpy_sin(x: Any) -> Any:
        y = tf.numpy_function(np.sin, [x], tf.float32)
        y.set_shape(x.shape)
        return y

    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Lambda(numpy_sin), keras.layers.Flatten()])
    call = ModelCall(model, (8, 8), None, max_batch_size=2, compiler=compiler, xla="always")
    x = batches(2)[0]
    call(x)
    call.settle()
    assert call.choices == {2: "graph"}
    assert np.allclose(call(x), np.sin(x).reshape(2, -1), atol=1e-6)


# LiteRT: the model converted to a flatbuffer, as the worker does when it publishes it.


@pytest.fixture(scope="module")
def flatbuffer(model: Any) -> bytes:
    return litert.convert(model)


def test_litert_answers_as_keras_on_every_layer_type(
    model: Any, flatbuffer: bytes, compiler: ThreadPoolExecutor
) -> None:
    runtime = LiteRtModel(flatbuffer, (8, 8), RESCALE)
    call = ModelCall(
        model, (8, 8), RESCALE, max_batch_size=8, compiler=compiler, xla="never", litert=runtime, litert_mode="always"
    )
    assert call.litert is runtime
    assert call.litert_refusal is None
    sizes = (1, 2, 3, 5, 8, 9, 30)
    assert not call.cheap(1)  # nothing is timed yet
    for x in batches(*sizes):
        call(x)
    call.settle()
    assert call.choices == {1: "litert", 2: "litert", 4: "litert", 8: "litert"}
    # Each bucket knows how long its runtime took; those under INLINE_SECONDS may run on the event loop.
    assert set(call.seconds) == {1, 2, 4, 8}
    assert [call.cheap(n) for n in (3, 8)] == [call.seconds[b] <= INLINE_SECONDS for b in (4, 8)]
    assert not call.cheap(9)
    before = call.calls.copy()
    for x in batches(*sizes):
        answer = call(x)
        assert answer.shape == (len(x), 10)
        assert np.allclose(answer, keras_answer(model, x), atol=1e-5)
    assert call.calls - before == {"graph": 2, "litert": 5}  # 9 and 30 are beyond the buckets


def test_litert_answers_as_keras_with_every_activation(compiler: ThreadPoolExecutor) -> None:
    """Every activation a layer may name, in one chain of dense layers."""
    import keras

    from service.spec import ACTIVATIONS

    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(8, 6)) * 3).astype(np.float32)
    inputs = keras.Input((6,))
    outputs = inputs
    for activation in ACTIVATIONS:
        outputs = keras.layers.Dense(6, activation=activation)(outputs)
    model = keras.Model(inputs, outputs)
    runtime = LiteRtModel(litert.convert(model), (6,), None)
    call = ModelCall(
        model, (6,), None, max_batch_size=8, compiler=compiler, xla="never", litert=runtime, litert_mode="always"
    )
    assert call.litert is runtime, call.litert_refusal
    call.compile_all()
    call.settle()
    assert np.allclose(call(x), model.predict_on_batch(x), atol=1e-5)
    assert call.calls["litert"] == 1


def test_a_flatbuffer_that_answers_otherwise_is_refused(model: Any, compiler: ThreadPoolExecutor) -> None:
    """The flatbuffer of a model of the same shapes with other weights: the probe batch tells them apart, and the
    model serves on TensorFlow."""
    import keras

    other = keras.models.clone_model(model)  # freshly initialised weights
    runtime = LiteRtModel(litert.convert(other), (8, 8), RESCALE)
    call = ModelCall(model, (8, 8), RESCALE, max_batch_size=4, compiler=compiler, litert=runtime, litert_mode="always")
    assert call.litert is None
    assert call.litert_refusal is not None
    assert "differ from the graph's" in call.litert_refusal
    call.compile_all()
    call.settle()
    assert "litert" not in call.choices.values()
    for x in batches(1, 3):
        assert np.allclose(call(x), keras_answer(model, x), atol=1e-5)


def test_a_model_that_does_not_convert_serves_on_tensorflow(compiler: ThreadPoolExecutor, tmp_path: Path) -> None:
    """A NumPy function inside the model is no TFLite op: the worker records why, writes no file, and the model
    is served by the graph."""
    import keras
    import tensorflow as tf

    from service.exports import write_exports
    from service.store import LocalStore

    def numpy_sin(x: Any) -> Any:
        y = tf.numpy_function(np.sin, [x], tf.float32)
        y.set_shape(x.shape)
        return y

    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Lambda(numpy_sin), keras.layers.Flatten()])
    with pytest.raises(litert.ConversionError):
        litert.convert(model)
    store = LocalStore(tmp_path)
    exported = write_exports(model, store=store, model_id="0" * 32, input_shape=(8, 8), rescale=None)
    record = exported.litert
    assert set(record) == {"error"}
    assert record["error"]
    assert f"{'0' * 32}.tflite" not in store.names("")
    call = ModelCall(model, (8, 8), None, max_batch_size=2, compiler=compiler, litert=None)
    x = batches(2)[0]
    assert np.allclose(call(x), np.sin(x).reshape(2, -1), atol=1e-6)
    assert call.litert is None
    assert call.litert_refusal == "the model has no flatbuffer"


def test_litert_answers_every_thread(model: Any, flatbuffer: bytes) -> None:
    """An interpreter is not safe to share: calls from several threads at once each get their own answer."""
    runtime = LiteRtModel(flatbuffer, (8, 8), RESCALE)
    inputs = batches(*[1 + i % 4 for i in range(64)])
    expected = [keras_answer(model, x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(runtime, inputs))
    for answer, want in zip(answers, expected, strict=True):
        assert np.allclose(answer, want, atol=1e-5)


def test_a_flatbuffer_the_interpreter_cannot_read_is_refused(flatbuffer: bytes) -> None:
    with pytest.raises(ValueError, match="not a valid Flatbuffer"):
        LiteRtModel(b"TFL3" + bytes(range(256)) * 4, (8, 8), RESCALE)
    with pytest.raises(ValueError, match="takes"):
        LiteRtModel(flatbuffer, (8, 9), RESCALE)


def test_litert_serves_a_batch_size_while_xla_compiles_it(
    model: Any, flatbuffer: bytes, compiler: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XLA's compilation of a batch size is held back here: until it is done, the faster of LiteRT and the graph
    already serves that size; then the three are timed again (XLA forced to win, to see the switch)."""
    import threading

    call = ModelCall(
        model,
        (8, 8),
        RESCALE,
        max_batch_size=2,
        compiler=compiler,
        xla="always",
        litert=LiteRtModel(flatbuffer, (8, 8), RESCALE),
    )
    compiling, release = threading.Event(), threading.Event()
    xla_on = call._xla_on

    def held(bucket: int, zeros: Any) -> Any:
        compiling.set()
        assert release.wait(30)
        return xla_on(bucket, zeros)

    monkeypatch.setattr(call, "_xla_on", held)
    (x,) = batches(1)
    call(x)  # asks for batch size 1
    assert compiling.wait(30)
    assert call.choices[1] in ("litert", "graph")
    assert np.allclose(call(x), keras_answer(model, x), atol=1e-5)
    release.set()
    call.settle()
    assert call.choices == {1: "xla"}
    assert np.allclose(call(x), keras_answer(model, x), atol=1e-5)
