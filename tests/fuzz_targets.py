"""One untrusted input into one parser, and what it may do: be accepted (as something that holds together) or be
refused with a 4xx-kind error and a short message — within a time and a memory bound, and nothing else.

The Hypothesis suite (tests/test_fuzz.py) and the coverage-guided long runs (tests/fuzz_atheris.py) both feed
these functions.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.datasets.files import DatasetFileError, IngestLimits, Kind, ParsedDataset, UploadOptions, parse
from service.serving.codecs import native, tfserving, v2
from service.serving.engine import Engine, ModelInfo
from service.serving.errors import InvalidInputError, ServingError, TooManyInstancesError
from service.settings import Settings

MIB = 1024 * 1024
# What one small input may cost (the inputs are at most tens of kilobytes): the limits below keep declared sizes
# from turning into allocations, and these bounds say so.
MEMORY_BOUND = 64 * MIB
SECONDS_BOUND = 10.0
MAX_MESSAGE = 1000

LIMITS = IngestLimits(
    max_stored_bytes=8 * MIB,
    max_files=200,
    max_image_pixels=1_000_000,
    max_decoded_pixels=4_000_000,
    max_label_length=64,
    max_classes=100,
    max_csv_columns=200,
    seconds=SECONDS_BOUND / 2,
)

# A model like the chapter's, on digits: what the prediction codecs check their inputs against.
DIGITS = ModelInfo(
    model_id="0" * 32,
    name="digits",
    version=1,
    sha256="0" * 64,
    input_shape=(8, 8),
    output_shape=(10,),
    rescale=None,
    class_names=None,
    activation_bytes=4 * (64 + 64 + 100 + 10),
    litert_sha256=None,
)


@contextmanager
def bounded(what: str) -> Iterator[None]:
    """Fails if the block allocates more than MEMORY_BOUND (as Python and NumPy count it) or runs too long."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        elapsed = time.monotonic() - started
    assert peak < MEMORY_BOUND, f"{what}: {peak / MIB:.1f} MiB for one small input"
    assert elapsed < SECONDS_BOUND, f"{what}: {elapsed:.1f} s for one small input"


def dataset_file(kind: Kind, data: bytes, options: UploadOptions | None = None) -> ParsedDataset | None:
    """An uploaded file read into a dataset: a consistent one, or DatasetFileError (413 or 422, a short reason)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"upload.{kind}"
        path.write_bytes(data)
        refused: DatasetFileError | None = None
        with bounded(f"a {kind} upload"):
            try:
                parsed = parse(path, kind, options or UploadOptions(), LIMITS)
            except DatasetFileError as exc:
                refused = exc
    if refused is not None:
        assert refused.status in (413, 422), refused.status
        assert 0 < len(refused.message) <= MAX_MESSAGE, refused.message[:200]
        return None
    assert len(parsed.x_train) == len(parsed.y_train) > 0
    assert parsed.x_train.dtype in (np.uint8, np.float32)
    assert 2 <= parsed.num_classes <= LIMITS.max_classes
    assert int(parsed.y_train.min()) >= 0
    assert int(parsed.y_train.max()) < parsed.num_classes
    assert parsed.class_names is None or len(parsed.class_names) == parsed.num_classes
    if parsed.x_test is not None:
        assert parsed.y_test is not None
        assert len(parsed.x_test) == len(parsed.y_test)
        assert parsed.x_test.shape[1:] == parsed.x_train.shape[1:]
    if parsed.x_train.dtype == np.float32:
        assert np.isfinite(parsed.x_train).all()
    assert parsed.nbytes <= LIMITS.max_stored_bytes
    return parsed


def _refused(call: Callable[[], Any], what: str) -> Any:
    """``call()``'s result, or None when it refused its input as a client's mistake."""
    refused: ServingError | None = None
    with bounded(what):
        try:
            return call()
        except ServingError as exc:
            refused = exc
    assert isinstance(refused, InvalidInputError | TooManyInstancesError), type(refused)
    assert len(refused.message) <= 10 * MAX_MESSAGE, refused.message[:200]
    return None


def _checked_batch(x: Any, info: ModelInfo) -> None:
    if x is not None:
        assert x.dtype == np.float32
        assert x.shape[1:] == info.input_shape
        assert len(x) >= 1
        assert np.isfinite(x).all()


def npy_body(data: bytes, engine: Engine, info: ModelInfo = DIGITS) -> None:
    """POST /predict with a .npy body."""

    def decode() -> Any:
        return native.to_batch(native.parse(data, native.NPY, {"model": "m"}), info, engine.check_count)

    _checked_batch(_refused(decode, "a .npy body"), info)


def json_predict_body(data: bytes, engine: Engine, info: ModelInfo = DIGITS) -> None:
    """POST /predict with a JSON body."""

    def decode() -> Any:
        request = native.parse(data, "application/json", {})
        engine.check_count(native.count(request) or 0, ("instances",))
        return native.to_batch(request, info, engine.check_count)

    _checked_batch(_refused(decode, "a JSON predict body"), info)


def tf_serving_body(data: bytes, engine: Engine, info: ModelInfo = DIGITS) -> None:
    """POST /v1/models/{name}:predict: row or columnar format."""

    def decode() -> Any:
        return tfserving.to_batch(tfserving.parse(data), info, engine.check_count)

    _checked_batch(_refused(decode, "a TF Serving body"), info)


def open_inference_body(data: bytes, header_length: str | None, engine: Engine, info: ModelInfo = DIGITS) -> None:
    """POST /v2/models/{name}/infer: JSON tensors, or the binary tensor data extension."""

    def decode() -> Any:
        request = v2.parse(data, header_length)
        x = v2.to_batch(request, info, engine.check_count)
        v2.wants_binary(request, info)
        return x

    _checked_batch(_refused(decode, "an inference request"), info)


def train_spec(data: bytes) -> None:
    """POST /train's body: refused by validation or by the dry build with a path, or a model Keras builds."""
    from pydantic import ValidationError

    from service.datasets.builtin import BUILTIN_DATASETS
    from service.keras_build import MemoryLimits, SpecError, dry_build
    from service.spec import TrainRequest

    with bounded("a training request"):
        try:
            request = TrainRequest.model_validate(orjson.loads(data))
        except (orjson.JSONDecodeError, ValidationError):
            return
        if request.dataset.name is None:
            return  # an upload's id: the dataset's record is in the database, which the HTTP tests cover
        try:
            build = dry_build(
                request,
                BUILTIN_DATASETS[request.dataset.name],
                max_params=200_000,
                memory=MemoryLimits(max_activation_bytes=16 * MIB, max_training_data_bytes=32 * MIB),
            )
        except SpecError as exc:
            problems = exc.problems
        else:
            problems = []
    if problems:
        assert all(path for path, _ in problems), problems
        return
    assert 0 < build.total_params <= 200_000
    assert build.activation_bytes * request.fit.batch_size <= 16 * MIB


def engine_for_fuzzing(home: Path) -> Engine:
    return Engine(Settings(home=home, max_predict_instances=64))
