"""A stored model as a callable on float32 batches, compiled once and reused for every request.

``model.predict`` builds a dataset and an iterator per call; ``predict_on_batch`` re-enters Keras' training
machinery. Here a model is traced once into a TensorFlow graph, preprocessing included (``ModelCall.graph``):
one bare graph call for any batch size.

For the small batches that serving is mostly made of, the graph's fixed cost per call (TensorFlow's executor
dispatching each op) outweighs the arithmetic. Two runtimes avoid most of it, each for one batch size at a time:
XLA compiles the whole model into one function (about 0.1 s per batch size), and the LiteRT interpreter runs the
model's flatbuffer, converted when it was published (``service.serving.litert``). So small batches are padded with
zero rows up to a bucket, a power of two up to ``max_batch_size``, and each bucket is decided the first time it is
used, in the background while that batch and the next run on the graph: LiteRT and the graph are timed side by side
on it and the faster serves it while XLA compiles it; then all three are timed and the bucket keeps the fastest (for
a large convolution the graph's oneDNN kernels can win). A runtime that fails on a bucket is left out of its choice.
Every layer the service builds computes each instance on its own at inference, so the zero rows change nothing and
are cut off the answer.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from service.serving.litert import (
    LITERT_OFF,
    NO_FLATBUFFER,
    PROBE_TOLERANCE,
    LiteRtModel,
    difference,
    probe_batch,
)

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
Kind = Literal["litert", "xla", "graph"]
RuntimeMode = Literal["auto", "always", "never"]
Function = Callable[[FloatArray], FloatArray]

# Timed calls of each runtime when a bucket is decided, side by side, the fastest of each counting: at least
# TIMING_ROUNDS rounds, and more (up to MAX_TIMING_ROUNDS) until TIMING_SECONDS have passed. A bucket is decided in
# the background while requests are served: the more rounds, the likelier one of them ran undisturbed.
TIMING_ROUNDS = 5
MAX_TIMING_ROUNDS = 200
TIMING_SECONDS = 0.05
# A call timed at most this long is cheaper than sending it to a thread and back; it may run on the event loop.
INLINE_SECONDS = 100e-6


def buckets_for(max_batch_size: int) -> list[int]:
    """The padded batch sizes: powers of two below ``max_batch_size``, and ``max_batch_size`` itself."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


class ModelCall:
    """Calls one model on float32 batches from any thread: per bucket the fastest of LiteRT, XLA and the graph.

    ``xla`` and ``litert`` are each ``auto`` (a candidate, kept where it times fastest), ``always`` (used on every
    bucket it runs, LiteRT before XLA) or ``never``. ``litert`` is the model's flatbuffer, if it has one; it serves
    only if its outputs on a probe batch equal the graph's (:data:`service.serving.litert.PROBE_TOLERANCE`).
    """

    def __init__(
        self,
        model: Any,
        input_shape: tuple[int, ...],
        rescale: float | None,
        *,
        max_batch_size: int,
        compiler: Executor,
        xla: RuntimeMode = "auto",
        litert: LiteRtModel | None = None,
        litert_mode: RuntimeMode = "auto",
        litert_refusal: str = NO_FLATBUFFER,
        max_rows: int | None = None,
    ) -> None:
        import tensorflow as tf

        self.input_shape = input_shape
        # The most instances one call of the model takes; a larger batch runs as several calls, one after another,
        # so that its layers' outputs never need more memory than the service gives a call.
        self.max_rows = max_rows or 2**62
        max_batch_size = min(max_batch_size, self.max_rows)
        # The memory of its weights (and of its flatbuffer, below), which the model cache is bounded by.
        self.nbytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
        scale = None if rescale is None else tf.constant(rescale, tf.float32)

        def serve(x: Any) -> Any:
            if scale is not None:
                x = x * scale
            return model(x, training=False)

        signature = [tf.TensorSpec([None, *input_shape], tf.float32)]
        self.graph = tf.function(serve, input_signature=signature).get_concrete_function()
        self._xla = tf.function(serve, jit_compile=True)
        self._xla_mode = xla
        if litert_mode == "never" and litert is not None:
            litert, litert_refusal = None, LITERT_OFF
        # Why the model has no LiteRT runtime, if it has none.
        self.litert_refusal: str | None = litert_refusal if litert is None else None
        self._litert = litert
        if self._litert is not None:
            self._litert = self._checked(self._litert, rescale)
        if self._litert is not None:  # the flatbuffer holds its own copy of the weights
            self.nbytes += len(self._litert.content)
        self._litert_mode = litert_mode
        runtimes = xla != "never" or self._litert is not None
        self._buckets = buckets_for(max_batch_size) if runtimes else []
        self._compiler = compiler
        # bucket → its chosen function (None: the graph); absent: not decided yet.
        self._chosen: dict[int, tuple[Kind, Function] | None] = {}
        self._requested: set[int] = set()
        self._lock = threading.Lock()
        self.choices: dict[int, Kind] = {}
        # bucket → the fastest time of its chosen runtime.
        self.seconds: dict[int, float] = {}
        self.calls: Counter[Kind] = Counter()

    @property
    def litert(self) -> LiteRtModel | None:
        """The model's LiteRT runtime, if it has one that gives the graph's answers."""
        return self._litert

    def _checked(self, litert: LiteRtModel, rescale: float | None) -> LiteRtModel | None:
        probe = probe_batch(self.input_shape, rescale)
        try:
            off = difference(litert(probe), self._graph(probe))
        except Exception as exc:  # a flatbuffer the interpreter cannot run
            self.litert_refusal = f"the interpreter failed on the probe batch: {type(exc).__name__}: {exc}"
            log.warning("LiteRT refused: %s", self.litert_refusal)
            return None
        if not off <= PROBE_TOLERANCE:  # NaN too
            self.litert_refusal = f"its outputs differ from the graph's by {off:.3g} on the probe batch"
            log.warning("LiteRT refused: %s", self.litert_refusal)
            return None
        return litert

    def _graph(self, x: FloatArray) -> FloatArray:
        import tensorflow as tf

        out: FloatArray = self.graph(tf.constant(x)).numpy()
        return out

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
        n = len(x)
        if self._buckets and n <= self._buckets[-1]:
            bucket = self._bucket(n)
            if bucket in self._chosen:
                chosen = self._chosen[bucket]
                if chosen is not None:
                    kind, function = chosen
                    self.calls[kind] += 1
                    padded = x if n == bucket else np.concatenate([x, np.zeros((bucket - n, *x.shape[1:]), x.dtype)])
                    return function(padded)[:n]
            elif bucket not in self._requested:
                self._request(bucket)
        self.calls["graph"] += 1
        return self._graph(x)

    def cheap(self, n: int) -> bool:
        """Whether a call on ``n`` instances was timed under :data:`INLINE_SECONDS` (False until its bucket is
        decided)."""
        if not self._buckets or n > self._buckets[-1]:
            return False
        return self.seconds.get(self._bucket(n), float("inf")) <= INLINE_SECONDS

    def warm_up(self) -> None:
        """Pay for the graph's first call now, not in the first request."""
        self(np.zeros((1, *self.input_shape), dtype=np.float32))

    def compile_all(self) -> None:
        """Ask for every bucket's decision now, rather than on first use."""
        for bucket in self._buckets:
            self._request(bucket)

    def settle(self) -> None:
        """Wait until every decision asked for so far has been made."""
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
            decision = self._compiler.submit(self._decide_bucket, bucket)
        except RuntimeError:  # the process is exiting: the graph serves to the end
            log.debug("no decision for batch size %d: the compiler has shut down", bucket)
            return
        decision.add_done_callback(functools.partial(_report_failure, bucket))

    def _litert_on(self, bucket: int, zeros: FloatArray) -> Function | None:
        """LiteRT for this bucket, if the model has it and it runs (called once: it allocates its tensors)."""
        if self._litert is None:
            return None
        try:
            self._litert(zeros)
        except Exception:
            log.warning("LiteRT could not run batch size %d; it is left out", bucket, exc_info=True)
            return None
        return self._litert

    def _xla_on(self, bucket: int, zeros: FloatArray) -> Function | None:
        """The model compiled by XLA for this bucket, unless XLA is off or cannot compile it."""
        import tensorflow as tf

        if self._xla_mode == "never":
            return None
        try:
            compiled = self._xla.get_concrete_function(tf.TensorSpec([bucket, *self.input_shape], tf.float32))
            compiled(tf.constant(zeros))  # compiles
        except Exception:  # an op XLA cannot compile
            log.warning("XLA could not compile batch size %d; it is left out", bucket, exc_info=True)
            return None

        def xla(x: FloatArray) -> FloatArray:
            out: FloatArray = compiled(tf.constant(x)).numpy()
            return out

        return xla

    def _decide_bucket(self, bucket: int) -> None:
        zeros = np.zeros((bucket, *self.input_shape), np.float32)
        functions: dict[Kind, Function] = {"graph": self._graph}
        litert = self._litert_on(bucket, zeros)
        if litert is not None:
            if self._litert_mode == "always":
                self._choose(bucket, {"litert": litert}, zeros)
                return
            functions["litert"] = litert
            if self._xla_mode != "never":
                # XLA takes a while to compile: meanwhile the faster of LiteRT and the graph serves the bucket.
                self._choose(bucket, functions, zeros)
        xla = self._xla_on(bucket, zeros)
        if xla is not None:
            functions = {"xla": xla} if self._xla_mode == "always" else {**functions, "xla": xla}
        self._choose(bucket, functions, zeros)

    def _choose(self, bucket: int, functions: dict[Kind, Function], zeros: FloatArray) -> None:
        """Time each runtime side by side on the bucket; the fastest serves it."""
        timings: dict[Kind, list[float]] = {kind: [] for kind in functions}
        started = time.perf_counter()
        rounds = 0
        while rounds < TIMING_ROUNDS or (rounds < MAX_TIMING_ROUNDS and time.perf_counter() - started < TIMING_SECONDS):
            for kind, function in functions.items():
                timings[kind].append(_seconds(function, zeros, CLOCKS[kind]))
            rounds += 1
        fastest = min(timings, key=lambda kind: min(timings[kind]))
        self.seconds[bucket] = min(timings[fastest])
        self._decide(bucket, fastest, functions[fastest])
        log.debug("batch size %d: %s", bucket, ", ".join(f"{k} {min(t) * 1e6:.0f} µs" for k, t in timings.items()))

    def _decide(self, bucket: int, kind: Kind, function: Function) -> None:
        self.choices[bucket] = kind
        self._chosen[bucket] = None if kind == "graph" else (kind, function)


def _report_failure(bucket: int, decision: Future[None]) -> None:
    exc = None if decision.cancelled() else decision.exception()
    if exc is not None:
        log.error("batch size %d could not be decided; the graph serves it", bucket, exc_info=exc)


# How each runtime's calls are timed. LiteRT (one thread, the caller's) by the CPU time of the timing thread: its
# wall time also counts the waits for the interpreter lock that this background thread meets whenever the event
# loop is busy — under load, 10× the call itself, which would send cheap calls to a thread for good. TensorFlow
# runs a call on its own threads, so the graph and XLA are timed by the wall clock.
CLOCKS: dict[Kind, Callable[[], float]] = {
    "litert": time.thread_time,
    "xla": time.perf_counter,
    "graph": time.perf_counter,
}


def _seconds(function: Function, x: FloatArray, clock: Callable[[], float]) -> float:
    """The time of one call, right after another: as a runtime serves calls in turn, not cold from the others'."""
    function(x)
    start = clock()
    function(x)
    return clock() - start


def load_model_call(
    path: Path,
    input_shape: tuple[int, ...],
    rescale: float | None,
    *,
    litert: bytes | None = None,
    litert_refusal: str | None = None,
    litert_rescaled: bool = False,
    **kwargs: Any,
) -> ModelCall:
    """Load a stored model (``safe_mode``: no code from the file runs) as a :class:`ModelCall`, with the LiteRT
    runtime of its flatbuffer (``litert``) if the interpreter reads it; ``litert_refusal``: why there is none;
    ``litert_rescaled``: the flatbuffer applies the rescale itself (it takes the dataset's units)."""
    from service.keras_build import load_stored_model

    model = load_stored_model(path)
    runtime = None
    refusal = litert_refusal or NO_FLATBUFFER
    if litert is not None:
        try:
            runtime = LiteRtModel(litert, input_shape, None if litert_rescaled else rescale)
        except Exception as exc:
            refusal = f"the interpreter did not read the flatbuffer: {type(exc).__name__}: {exc}"
            log.warning("LiteRT refused: %s", refusal)
    return ModelCall(model, input_shape, rescale, litert=runtime, litert_refusal=refusal, **kwargs)
