"""A model's compiled call: XLA per padded batch size, compiled in the background, the graph otherwise; every
answer equal to Keras' own."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from service.serving.model_call import ModelCall, buckets_for

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
