"""Serving trained models: find the model a request names, keep it loaded, run it in merged batches.

Every protocol (POST /predict, TensorFlow Serving's /v1, the Open Inference Protocol's /v2) goes through
``Serving``: ``resolve`` a reference to a loaded model, check the input with ``batch_from_*``, ``predict``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi.concurrency import run_in_threadpool

from service import registry
from service.api.batching import Batcher, BatchStats
from service.api.body_buffers import BodyBuffers, BodyBytes
from service.api.model_call import ModelCall, XlaMode, load_model_call
from service.db import ModelRow, session_factory
from service.registry import ModelRef
from service.settings import Settings
from service.store import StoreError, verified_path

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float32]

INPUT_NAME = "input"
OUTPUT_NAME = "output"


class PredictError(Exception):
    """A predict request that cannot be answered. Each protocol renders it in its own error format.

    ``kind``: ``not_found`` (404), ``invalid_input`` (native 422, TF Serving and v2 400), ``too_many_instances``
    (413), ``store_error`` (500). ``loc`` is where in a native request the problem is.
    """

    def __init__(self, kind: str, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.loc = loc


def invalid(message: str, loc: tuple[str | int, ...] = ()) -> PredictError:
    return PredictError("invalid_input", message, loc)


@dataclass(frozen=True)
class ModelInfo:
    """What serving needs from a model's record, detached from any database session."""

    model_id: str
    name: str
    version: int
    sha256: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]  # of one instance
    rescale: float | None
    class_names: tuple[str, ...] | None
    # float32 bytes of one instance's input and layer outputs, from the shapes Keras reported when it trained.
    activation_bytes: int

    @classmethod
    def from_row(cls, row: ModelRow) -> ModelInfo:
        layers = row.summary.get("layers") or []
        rescale = row.dataset.get("rescale")
        input_shape = tuple(int(d) for d in row.input_shape)
        return cls(
            model_id=row.id,
            name=row.name,
            version=row.version,
            sha256=row.sha256,
            input_shape=input_shape,
            output_shape=tuple(int(d) for d in layers[-1]["output_shape"][1:]) if layers else (),
            rescale=None if rescale is None else float(rescale),
            class_names=tuple(row.class_names) if row.class_names else None,
            activation_bytes=4
            * (math.prod(input_shape) + sum(math.prod(d or 1 for d in layer["output_shape"][1:]) for layer in layers)),
        )

    def rows_per_call(self, max_activation_bytes: int) -> int:
        """The most instances one call of this model may take within the activation budget."""
        return max(1, max_activation_bytes // max(1, self.activation_bytes))


@dataclass
class LoadedModel:
    """A model ready to answer: its record, its compiled call and the batcher that feeds it."""

    info: ModelInfo
    call: ModelCall = field(repr=False)
    batcher: Batcher = field(repr=False)

    @property
    def nbytes(self) -> int:
        """The bytes its weights take."""
        nbytes: int = self.call.nbytes
        return nbytes


class ModelCache:
    """The loaded models, least recently used first, bounded by count and by the memory of their weights.

    Only the event loop's thread reads or changes it, so it needs no lock; loading happens in a thread, once
    per model however many requests ask for it meanwhile.
    """

    def __init__(
        self,
        *,
        store: Path,
        capacity: int,
        max_bytes: int,
        make_batcher: Callable[[ModelInfo, ModelCall], Batcher],
        max_batch_size: int,
        max_activation_bytes: int,
        compiler: Executor,
        xla: XlaMode,
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._make_batcher = make_batcher
        self._max_batch_size = max_batch_size
        self._max_activation_bytes = max_activation_bytes
        self._compiler = compiler
        self._xla: XlaMode = xla
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        # Keras names layers from process-wide counters: load one model at a time.
        self._load_lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    def peek(self, model_id: str) -> LoadedModel | None:
        """The loaded model, marked as just used; None if it is not loaded."""
        loaded = self._models.get(model_id)
        if loaded is not None:
            self._models.move_to_end(model_id)
        return loaded

    async def get(self, info: ModelInfo) -> LoadedModel:
        loaded = self.peek(info.model_id)
        if loaded is not None:
            return loaded
        task = self._loading.get(info.model_id)
        if task is None:
            task = asyncio.ensure_future(self._load(info))
            self._loading[info.model_id] = task
        # A caller that goes away does not cancel the load the others wait for.
        return await asyncio.shield(task)

    @property
    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    async def _load(self, info: ModelInfo) -> LoadedModel:
        try:
            call = await run_in_threadpool(self._load_sync, info)
            loaded = LoadedModel(info=info, call=call, batcher=self._make_batcher(info, call))
            self._models[info.model_id] = loaded
            self.loads += 1
            self._evict()
            log.info(
                "loaded model %s (%s@%d, %d bytes of weights)", info.model_id, info.name, info.version, call.nbytes
            )
            return loaded
        finally:
            self._loading.pop(info.model_id, None)

    def _load_sync(self, info: ModelInfo) -> ModelCall:
        try:
            path = verified_path(self.store, info.model_id, info.sha256)
        except StoreError as exc:
            raise PredictError("store_error", str(exc)) from exc
        with self._load_lock:
            call = load_model_call(
                path,
                info.input_shape,
                info.rescale,
                max_batch_size=self._max_batch_size,
                compiler=self._compiler,
                xla=self._xla,
                max_rows=info.rows_per_call(self._max_activation_bytes),
            )
        call.warm_up()
        return call

    def _evict(self) -> None:
        while len(self._models) > 1 and (len(self._models) > self.capacity or self.nbytes > self.max_bytes):
            model_id, evicted = self._models.popitem(last=False)
            self.evictions += 1
            log.info("unloaded model %s (%s@%d)", model_id, evicted.info.name, evicted.info.version)


class Serving:
    """Resolves references to loaded models and runs them; one per API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_instances = settings.max_predict_instances
        self.stats = BatchStats()
        self.bodies = BodyBuffers()
        # Model calls run here, off the event loop; TensorFlow itself spreads one call over the cores.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inference")
        # XLA compilations of the loaded models' batch sizes, one at a time, in the background.
        self.compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
        self.cache = ModelCache(
            store=settings.store_dir,
            capacity=settings.predict_cache_size,
            max_bytes=settings.predict_cache_bytes,
            make_batcher=self._make_batcher,
            max_batch_size=settings.max_batch_size,
            max_activation_bytes=settings.max_activation_bytes,
            compiler=self.compiler,
            xla=settings.predict_xla,
        )
        # (name, version) → model id never changes once published; only "latest" needs the database each time.
        self._pinned: dict[tuple[str, int], str] = {}

    def _make_batcher(self, info: ModelInfo, call: ModelCall) -> Batcher:
        return Batcher(
            call,
            executor=self.executor,
            max_batch_size=min(self.settings.max_batch_size, call.max_rows),
            max_latency_s=self.settings.max_latency_ms / 1000,
            stats=self.stats.for_model(f"{info.model_id}", info.name, info.version),
        )

    async def resolve(self, ref: ModelRef) -> LoadedModel:
        """The loaded model a reference names (loading it if needed), or PredictError not_found."""
        model_id = ref.model_id
        if model_id is None and ref.name is not None and ref.version is not None:
            model_id = self._pinned.get((ref.name, ref.version))
        if model_id is not None:
            loaded = self.cache.peek(model_id)
            if loaded is not None:
                return loaded
        info = await self.find(ref)
        if ref.version is not None:
            if len(self._pinned) > 4096:
                self._pinned.clear()
            self._pinned[(info.name, info.version)] = info.model_id
        return await self.cache.get(info)

    async def find(self, ref: ModelRef) -> ModelInfo:
        """The record a reference names, from the database."""
        info = await run_in_threadpool(self._find_sync, ref)
        if info is None:
            raise PredictError("not_found", not_found_message(ref))
        return info

    async def versions(self, name: str) -> list[ModelInfo]:
        """Every version of a name, newest first (empty if there is no such name)."""
        return await run_in_threadpool(self._versions_sync, name)

    def _find_sync(self, ref: ModelRef) -> ModelInfo | None:
        with session_factory(self.settings.database_url)() as session:
            row = registry.find(session=session, ref=ref)
            return None if row is None else ModelInfo.from_row(row)

    def _versions_sync(self, name: str) -> list[ModelInfo]:
        with session_factory(self.settings.database_url)() as session:
            return [ModelInfo.from_row(row) for row in registry.versions(session=session, name=name)]

    async def predict(self, loaded: LoadedModel, x: FloatArray) -> FloatArray:
        """The model's outputs for a checked batch, computed together with concurrent requests' batches."""
        return await loaded.batcher.submit(x)

    def check_count(self, count: int, loc: tuple[str | int, ...] = ()) -> None:
        if count > self.max_instances:
            raise PredictError(
                "too_many_instances",
                f"{count} instances in one request; the limit is {self.max_instances} "
                f"(TRAINSERVE_MAX_PREDICT_INSTANCES): split the request",
                loc,
            )


def not_found_message(ref: ModelRef) -> str:
    if ref.model_id is not None:
        return f"no model with id {ref.model_id!r}"
    if ref.version is not None:
        return f"model {ref.name!r} has no version {ref.version}"
    return f"no model named {ref.name!r}"


def batch_from_json(values: Any, info: ModelInfo, what: str, loc: tuple[str | int, ...]) -> FloatArray:
    """Nested JSON numbers as a float32 batch of the model's input shape, or PredictError invalid_input."""
    expected = [len(values) if isinstance(values, list) else 1, *info.input_shape]
    try:
        with np.errstate(over="ignore"):  # beyond float32's range is infinity, refused below
            x = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid(f"{what} must be numbers in an array of shape {expected}: {exc}", loc) from exc
    if list(x.shape) != expected:
        raise invalid(f"{what} have shape {list(x.shape)}; this model expects {expected}", loc)
    return check_finite(x, what, loc)


# The header of a .npy file: its magic, its length and a dict of at most 64 KiB in format 1.0.
NPY_HEADER_PEEK = 12 + 65_536


def batch_from_npy(body: BodyBytes, info: ModelInfo, limit: Callable[[int], None]) -> FloatArray:
    """A ``.npy`` body (numbers, shape (n, *input_shape)) as a float32 batch, without copying float32 data."""
    stream = io.BytesIO(body[:NPY_HEADER_PEEK])
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # whatever numpy's header parser meets in a hand-made header: not a .npy array
        raise invalid(f"the body is not a .npy array: {str(exc)[:200]}", ("body",)) from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise invalid(f"the .npy array holds {dtype}; send numbers (float32 is used as is)", ("body",))
    expected = ["n", *info.input_shape]
    if (
        not all(type(d) is int for d in shape)
        or len(shape) != len(expected)
        or list(shape[1:]) != list(info.input_shape)
    ):
        raise invalid(f"the .npy array has shape {list(shape)[:8]}; this model expects {expected}", ("body",))
    if shape[0] == 0:
        raise invalid("the .npy array holds no instances; send at least one", ("body",))
    limit(int(shape[0]))
    count = int(np.prod(shape))
    offset = stream.tell()
    if len(body) - offset != count * dtype.itemsize:
        raise invalid(
            f"the .npy body holds {len(body) - offset} bytes of data; shape {list(shape)} needs "
            f"{count * dtype.itemsize}",
            ("body",),
        )
    x = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    x = x.reshape(shape[::-1]).transpose() if fortran_order else x.reshape(shape)
    return check_finite(np.ascontiguousarray(x, dtype=np.float32), "instances", ())


def check_finite(x: FloatArray, what: str, loc: tuple[str | int, ...]) -> FloatArray:
    # min and max carry any NaN or infinity through, without a mask the size of the batch.
    if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):
        bad = int(np.argwhere(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0][0])
        raise invalid(f"{what} must be finite numbers (no NaN or Infinity)", (*loc, bad) if loc else ())
    return x


def classes_of(outputs: FloatArray) -> Array:
    if outputs.shape[-1] == 1:  # one sigmoid unit: class 1 when p ≥ 0.5
        result: Array = (outputs[:, 0] >= 0.5).astype(np.int64)
        return result
    classes: Array = outputs.argmax(axis=-1)
    return classes
