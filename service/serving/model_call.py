"""A stored model as a callable on float32 batches, compiled once and reused for every request.

``model.predict`` builds a dataset and an iterator per call; ``predict_on_batch`` re-enters Keras' training
machinery. Here a model is traced once into a TensorFlow graph, preprocessing included (``ModelCall.graph``):
one bare graph call for any batch size.

For the small batches that serving is mostly made of, the graph's fixed cost per call (TensorFlow's executor
dispatching each op) outweighs the arithmetic. XLA compiles the whole model into one function and roughly halves
that cost, but it compiles for one batch size at a time (about 0.1 s each). So small batches are padded with zero
rows up to a bucket, a power of two up to ``max_batch_size``, and each bucket is compiled the first time it is
used: in the background, while that batch and the next run on the graph. Once compiled, the bucket's XLA call and
the graph are timed side by side and the bucket keeps whichever is faster (for a large convolution the graph's
oneDNN kernels can win). A bucket XLA cannot compile keeps the graph. Every layer the service builds computes each
instance on its own at inference, so the zero rows change nothing and are cut off the answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
Kind = Literal["xla", "graph"]
XlaMode = Literal["auto", "always", "never"]

# Timed calls of each kind when a bucket's XLA function is compiled; the fastest of each counts.
TIMING_ROUNDS = 5


def buckets_for(max_batch_size: int) -> list[int]:
    """The padded batch sizes: powers of two below ``max_batch_size``, and ``max_batch_size`` itself."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


class ModelCall:
    """Calls one model on float32 batches from any thread: XLA per bucket where it is faster, else the graph."""

    def __init__(
        self,
        model: Any,
        input_shape: tuple[int, ...],
        rescale: float | None,
        *,
        max_batch_size: int,
        compiler: Executor,
        xla: XlaMode = "auto",
        max_rows: int | None = None,
    ) -> None:
        import tensorflow as tf

        self.input_shape = input_shape
        # The most instances one call of the model takes; a larger batch runs as several calls, one after another,
        # so that its layers' outputs never need more memory than the service gives a call.
        self.max_rows = max_rows or 2**62
        max_batch_size = min(max_batch_size, self.max_rows)
        self.nbytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
        scale = None if rescale is None else tf.constant(rescale, tf.float32)

        def serve(x: Any) -> Any:
            if scale is not None:
                x = x * scale
            return model(x, training=False)

        signature = [tf.TensorSpec([None, *input_shape], tf.float32)]
        self.graph = tf.function(serve, input_signature=signature).get_concrete_function()
        self._xla = tf.function(serve, jit_compile=True)
        self._buckets = buckets_for(max_batch_size) if xla != "never" else []
        self._xla_mode = xla
        self._compiler = compiler
        # bucket → its chosen function (None: the graph); absent: not decided yet.
        self._chosen: dict[int, Callable[[Any], Any] | None] = {}
        self._requested: set[int] = set()
        self._lock = threading.Lock()
        self.choices: dict[int, Kind] = {}
        self.calls: Counter[Kind] = Counter()

    def __call__(self, x: FloatArray) -> FloatArray:
        n = len(x)
        if n <= self.max_rows:
            return self._call(x)
        first = self._call(x[: self.max_rows])
        out = np.empty((n, *first.shape[1:]), first.dtype)
        out[: len(first)] = first
        for start in range(self.max_rows, n, self.max_rows):
            out[start : start + self.max_rows] = self._call(x[start : start + self.max_rows])
        return out

    def _call(self, x: FloatArray) -> FloatArray:
        import tensorflow as tf

        n = len(x)
        if self._buckets and n <= self._buckets[-1]:
            bucket = self._bucket(n)
            if bucket in self._chosen:
                function = self._chosen[bucket]
                if function is not None:
                    self.calls["xla"] += 1
                    padded = x if n == bucket else np.concatenate([x, np.zeros((bucket - n, *x.shape[1:]), x.dtype)])
                    result: FloatArray = function(tf.constant(padded)).numpy()
                    return result[:n]
            elif bucket not in self._requested:
                self._request(bucket)
        self.calls["graph"] += 1
        out: FloatArray = self.graph(tf.constant(x)).numpy()
        return out

    def warm_up(self) -> None:
        """Pay for the graph's first call now, not in the first request."""
        self(np.zeros((1, *self.input_shape), dtype=np.float32))

    def compile_all(self) -> None:
        """Ask for every bucket's compilation now, rather than on first use."""
        for bucket in self._buckets:
            self._request(bucket)

    def settle(self) -> None:
        """Wait until every compilation asked for so far has been decided."""
        self._compiler.submit(lambda: None).result()

    def _bucket(self, n: int) -> int:
        for bucket in self._buckets:
            if n <= bucket:
                return bucket
        raise ValueError(n)  # pragma: no cover - the caller checks n against the largest bucket

    def _request(self, bucket: int) -> None:
        with self._lock:
            if bucket in self._requested:
                return
            self._requested.add(bucket)
        try:
            self._compiler.submit(self._compile, bucket)
        except RuntimeError:  # the process is exiting: the graph serves to the end
            log.debug("no compilation of batch size %d: the compiler has shut down", bucket)

    def _compile(self, bucket: int) -> None:
        import tensorflow as tf

        zeros = tf.zeros([bucket, *self.input_shape], tf.float32)
        try:
            function = self._xla.get_concrete_function(tf.TensorSpec([bucket, *self.input_shape], tf.float32))
            function(zeros)  # compiles
        except Exception:  # an op XLA cannot compile: the graph serves this bucket
            log.warning("XLA could not compile batch size %d; it keeps the graph", bucket, exc_info=True)
            self._decide(bucket, None)
            return
        if self._xla_mode == "always":
            self._decide(bucket, function)
            return
        xla, graph = [], []
        for _ in range(TIMING_ROUNDS):
            xla.append(_seconds(function, zeros))
            graph.append(_seconds(self.graph, zeros))
        self._decide(bucket, function if min(xla) < min(graph) else None)
        log.debug("batch size %d: XLA %.0f µs, graph %.0f µs", bucket, min(xla) * 1e6, min(graph) * 1e6)

    def _decide(self, bucket: int, function: Callable[[Any], Any] | None) -> None:
        self.choices[bucket] = "graph" if function is None else "xla"
        self._chosen[bucket] = function


def _seconds(function: Callable[[Any], Any], x: Any) -> float:
    start = time.perf_counter()
    function(x).numpy()
    return time.perf_counter() - start


def load_model_call(path: Path, input_shape: tuple[int, ...], rescale: float | None, **kwargs: Any) -> ModelCall:
    """Load a stored model (``safe_mode``: no code from the file runs) as a :class:`ModelCall`."""
    import keras

    model = keras.models.load_model(path, compile=False, safe_mode=True)
    return ModelCall(model, input_shape, rescale, **kwargs)
