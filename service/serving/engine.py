"""The serving engine: find the model a request names, keep it loaded, run it in merged batches.

Every protocol (POST /predict, TensorFlow Serving's /v1, the Open Inference Protocol's /v2) goes through one
``Engine``: its codec turns the request into a reference and an array, the engine resolves the reference to a
loaded model and computes the array's outputs, and the codec turns those into the protocol's answer. The engine
knows nothing of HTTP; its failures are ``service.serving.errors``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service import registry
from service.datasets.text import TextEncoding
from service.db import UNREACHABLE, ModelRow, session_factory
from service.registry import ModelRef
from service.serving.batching import Batcher, BatchStats
from service.serving.errors import (
    ModelNotFoundError,
    ServiceUnavailableError,
    StoreIntegrityError,
    TooManyInstancesError,
)
from service.serving.litert import LITERT_OFF, NO_FLATBUFFER
from service.serving.model_call import ModelCall, RuntimeMode, load_model_call
from service.settings import Settings
from service.store import Store, StoreError, litert_key, model_key, model_store

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


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
    # The sha256 of its LiteRT flatbuffer, if it has one.
    litert_sha256: str | None
    # Whether that flatbuffer applies the rescale itself (made from the model's SavedModel export).
    litert_rescaled: bool = False
    # A model trained on texts: how a text becomes its input, so instances may be raw text.
    text: TextEncoding | None = None

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
            litert_sha256=(row.litert or {}).get("sha256"),
            litert_rescaled=bool((row.litert or {}).get("rescaled")),
            text=None if row.text is None else TextEncoding.from_json(row.text),
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
        store: Store,
        capacity: int,
        max_bytes: int,
        make_batcher: Callable[[ModelInfo, ModelCall], Batcher],
        max_batch_size: int,
        max_activation_bytes: int,
        compiler: Executor,
        xla: RuntimeMode,
        litert: RuntimeMode,
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._make_batcher = make_batcher
        self._max_batch_size = max_batch_size
        self._max_activation_bytes = max_activation_bytes
        self._compiler = compiler
        self._xla: RuntimeMode = xla
        self._litert: RuntimeMode = litert
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        # Keras names layers from process-wide counters: load one model at a time.
        self._load_lock = threading.Lock()
        self.loads = 0
        self.evictions = 0
        # Stored files refused because they were not the ones recorded: .keras files and flatbuffers.
        self.integrity_failures: Counter[str] = Counter()

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
            call = await asyncio.to_thread(self._load_sync, info)
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
            path = self.store.local(model_key(info.model_id), info.sha256, f"file of model {info.model_id}")
        except StoreError as exc:
            self.integrity_failures["keras"] += 1
            raise StoreIntegrityError(str(exc)) from exc
        flatbuffer, refusal = self._flatbuffer(info)
        with self._load_lock:
            call = load_model_call(
                path,
                info.input_shape,
                info.rescale,
                litert=flatbuffer,
                litert_refusal=refusal,
                litert_rescaled=info.litert_rescaled,
                litert_mode=self._litert,
                max_batch_size=self._max_batch_size,
                compiler=self._compiler,
                xla=self._xla,
                max_rows=info.rows_per_call(self._max_activation_bytes),
            )
        call.warm_up()
        return call

    def _flatbuffer(self, info: ModelInfo) -> tuple[bytes | None, str | None]:
        """The model's verified flatbuffer, or why there is none to run. A stored flatbuffer that is not the one
        recorded never runs; the verified .keras file still answers, on TensorFlow."""
        if self._litert == "never":
            return None, LITERT_OFF  # not even read
        if info.litert_sha256 is None:
            return None, NO_FLATBUFFER
        try:
            return self.store.read(
                litert_key(info.model_id), info.litert_sha256, f"flatbuffer of model {info.model_id}"
            ), None
        except StoreError as exc:
            self.integrity_failures["litert"] += 1
            log.error("model %s is served without LiteRT: %s", info.model_id, exc)
            return None, str(exc)

    def _evict(self) -> None:
        while len(self._models) > 1 and (len(self._models) > self.capacity or self.nbytes > self.max_bytes):
            model_id, evicted = self._models.popitem(last=False)
            self.evictions += 1
            log.info("unloaded model %s (%s@%d)", model_id, evicted.info.name, evicted.info.version)


class Engine:
    """Resolves references to loaded models and runs them; one per API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_instances = settings.max_predict_instances
        self.stats = BatchStats()
        # Model calls run here, off the event loop; TensorFlow itself spreads one call over the cores.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inference")
        # XLA compilations of the loaded models' batch sizes, one at a time, in the background.
        self.compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
        self.cache = ModelCache(
            store=model_store(settings),
            capacity=settings.predict_cache_size,
            max_bytes=settings.predict_cache_bytes,
            make_batcher=self._make_batcher,
            max_batch_size=settings.max_batch_size,
            max_activation_bytes=settings.max_activation_bytes,
            compiler=self.compiler,
            xla=settings.predict_xla,
            litert=settings.predict_litert,
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
            inline=call.cheap,
        )

    async def resolve(self, ref: ModelRef) -> LoadedModel:
        """The loaded model a reference names (loading it if needed), or ModelNotFoundError."""
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
        try:
            info = await asyncio.to_thread(self._find_sync, ref)
        except UNREACHABLE as exc:
            raise ServiceUnavailableError("the database is unreachable; try again shortly") from exc
        if info is None:
            raise ModelNotFoundError(not_found_message(ref))
        return info

    async def versions(self, name: str) -> list[ModelInfo]:
        """Every version of a name, newest first (empty if there is no such name)."""
        try:
            return await asyncio.to_thread(self._versions_sync, name)
        except UNREACHABLE as exc:
            raise ServiceUnavailableError("the database is unreachable; try again shortly") from exc

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
        check_count(count, self.max_instances, loc)


def check_count(count: int, limit: int, loc: tuple[str | int, ...] = ()) -> None:
    if count > limit:
        raise TooManyInstancesError(
            f"{count} instances in one request; the limit is {limit} (TRAINSERVE_MAX_PREDICT_INSTANCES): "
            f"split the request",
            loc,
        )


def not_found_message(ref: ModelRef) -> str:
    if ref.model_id is not None:
        return f"no model with id {ref.model_id!r}"
    if ref.version is not None:
        return f"model {ref.name!r} has no version {ref.version}"
    return f"no model named {ref.name!r}"
