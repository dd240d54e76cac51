"""LiteRT: a stored model as a TFLite flatbuffer, run by the LiteRT interpreter for small batches.

One TensorFlow graph call costs a few hundred microseconds however small the batch: the executor dispatches every
op. The LiteRT interpreter (XNNPACK kernels, no executor) runs the chapter's model on one instance in about ten,
and stays ahead up to batches of some dozens; beyond, TensorFlow's kernels win. So a model is converted once,
when it is published (:func:`convert`, in the worker), the flatbuffer is stored beside its ``.keras`` file with
its sha256, and an API process only loads it (:class:`LiteRtModel`): the model call times it against the graph
per batch size and keeps the faster (``service.serving.model_call``).

The conversion goes through an exported SavedModel, the path TensorFlow's converter takes for a Keras model (from
a traced function it gave NaN): the worker converts the SavedModel it exports for TensorFlow Serving
(``service.exports``), whose ``serving_default`` applies the dataset's rescale itself, so the flatbuffer takes
inputs in the dataset's units as every prediction protocol does (its record says ``"rescaled": true``; a flatbuffer
of a model published before takes them rescaled, and :class:`LiteRtModel` rescales for it). Even so, every loaded
flatbuffer must give the graph's answers on a probe batch (:func:`difference` within :data:`PROBE_TOLERANCE`)
before it serves, and a model that does not convert, or whose flatbuffer differs, is served by the graph.
"""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

# Largest difference from the graph's outputs allowed on the probe batch, relative to the outputs' magnitude
# (at least 1): float32 kernels that sum in another order differ by some 1e-7.
PROBE_TOLERANCE = 1e-5
PROBE_ROWS = 8
# Why a loaded model has no LiteRT runtime, when it is not the flatbuffer's fault.
NO_FLATBUFFER = "the model has no flatbuffer"
LITERT_OFF = "LiteRT is off (TRAINSERVE_PREDICT_LITERT=never)"
RECURRENT = "recurrent layers do not convert to TFLite's builtin ops: the TensorFlow graph serves the model"


class ConversionError(Exception):
    """A model TensorFlow's converter could not turn into a flatbuffer."""


def check_convertible(model: Any) -> None:
    """Raise ConversionError for a model TFLite's builtin ops cannot run, before any work is spent on it."""
    import keras

    if any(isinstance(layer, keras.layers.RNN | keras.layers.Bidirectional) for layer in model.layers):
        # Their loops over the steps are TensorFlow list ops, which the converter lowers only behind a private flag.
        raise ConversionError(RECURRENT)


def convert(model: Any) -> bytes:
    """The model's inference function (``training=False``) as a TFLite flatbuffer: float32, TFLite's builtin ops.
    It takes what the model takes (inputs after the rescale)."""
    import tensorflow as tf

    check_convertible(model)
    try:
        # It exports the model as a SavedModel in a temporary directory, and prints that export's endpoints.
        with contextlib.redirect_stdout(io.StringIO()):
            content: bytes = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    except Exception as exc:
        raise ConversionError(f"{type(exc).__name__}: {exc}".strip()[:2000]) from exc
    return content


def convert_saved_model(directory: Path, signature: str) -> bytes:
    """A SavedModel's ``signature`` as a TFLite flatbuffer (float32, TFLite's builtin ops), with that signature's
    input and output names."""
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(directory), signature_keys=[signature])
        content: bytes = converter.convert()
    except Exception as exc:
        raise ConversionError(f"{type(exc).__name__}: {exc}".strip()[:2000]) from exc
    return content


class LiteRtModel:
    """A flatbuffer, callable from any thread on float32 batches of any size.

    An interpreter computes one batch size (its tensors are allocated for it) and is not safe to share between
    threads: each thread keeps one interpreter per batch size it has run, made on first use. The service calls it
    only with the padded batch sizes it chose it for, so there are a handful.
    """

    def __init__(self, content: bytes, input_shape: tuple[int, ...], rescale: float | None) -> None:
        """``rescale``: what to multiply inputs by before the flatbuffer sees them (None when it rescales itself)."""
        from ai_edge_litert.interpreter import Interpreter

        self.content = content
        self.input_shape = input_shape
        self.scale = None if rescale is None else np.float32(rescale)
        self._local = threading.local()
        read = Interpreter(model_content=content, num_threads=1)  # ValueError for what is no flatbuffer
        inputs, outputs = read.get_input_details(), read.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"the flatbuffer has {len(inputs)} inputs and {len(outputs)} outputs, not one of each")
        takes = [int(d) for d in inputs[0]["shape_signature"]]
        if takes != [-1, *input_shape] or inputs[0]["dtype"] != np.float32:
            raise ValueError(f"the flatbuffer takes {takes} {np.dtype(inputs[0]['dtype'])}, not [-1, *{input_shape}]")
        self._input = int(inputs[0]["index"])
        self._output = int(outputs[0]["index"])

    def _new(self, rows: int) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self.content, num_threads=1)
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, [rows, *self.input_shape], strict=True)
        interpreter.allocate_tensors()
        return interpreter

    def __call__(self, x: FloatArray) -> FloatArray:
        interpreters: dict[int, Any] | None = getattr(self._local, "interpreters", None)
        if interpreters is None:
            interpreters = self._local.interpreters = {}
        rows = len(x)
        interpreter = interpreters.get(rows)
        if interpreter is None:
            interpreter = interpreters[rows] = self._new(rows)
        if self.scale is not None:
            x = x * self.scale
        interpreter.set_tensor(self._input, np.ascontiguousarray(x, dtype=np.float32))
        interpreter.invoke()
        out: FloatArray = interpreter.get_tensor(self._output)  # a copy: the interpreter's buffer is reused
        return out


def probe_batch(input_shape: tuple[int, ...], rescale: float | None) -> FloatArray:
    """Inputs over the range a model is fed (after rescaling, [0, 1)), the same ones every time."""
    rng = np.random.default_rng(0)
    x = rng.random((PROBE_ROWS, *input_shape), dtype=np.float32)
    return x / np.float32(rescale) if rescale else x


def difference(litert: FloatArray, graph: FloatArray) -> float:
    """How far LiteRT's outputs are from the graph's, relative to their magnitude (NaN anywhere: infinitely)."""
    if litert.shape != graph.shape or not np.isfinite(litert).all():
        return float("inf")
    scale = max(1.0, float(np.abs(graph).max(initial=0.0)))
    return float(np.abs(litert - graph).max(initial=0.0)) / scale
