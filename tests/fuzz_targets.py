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

from service.api.errors import ApiError
from service.api.predictor import ModelInfo, PredictError, Serving, batch_from_json, batch_from_npy
from service.dataset_files import DatasetFileError, IngestLimits, Kind, ParsedDataset, UploadOptions, parse
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
    refused: PredictError | ApiError | None = None
    with bounded(what):
        try:
            return call()
        except (PredictError, ApiError) as exc:
            refused = exc
    if isinstance(refused, PredictError):
        assert refused.kind in ("invalid_input", "too_many_instances"), refused.kind
        assert len(refused.message) <= 10 * MAX_MESSAGE, refused.message[:200]
    elif isinstance(refused, ApiError):
        assert 400 <= refused.status_code < 500, refused.status_code
    return None


def _checked_batch(x: Any, info: ModelInfo) -> None:
    if x is not None:
        assert x.dtype == np.float32
        assert x.shape[1:] == info.input_shape
        assert len(x) >= 1
        assert np.isfinite(x).all()


def npy_body(data: bytes, serving: Serving, info: ModelInfo = DIGITS) -> None:
    """POST /predict with a .npy body."""
    _checked_batch(_refused(lambda: batch_from_npy(data, info, serving.check_count), "a .npy body"), info)


def json_predict_body(data: bytes, serving: Serving, info: ModelInfo = DIGITS) -> None:
    """POST /predict with a JSON body."""
    from service.api.routers.predict import _json_request

    def decode() -> Any:
        _, instances = _json_request(data)
        serving.check_count(len(instances), ("instances",))
        return batch_from_json(instances, info, "instances", ("instances",))

    _checked_batch(_refused(decode, "a JSON predict body"), info)


def tf_serving_body(data: bytes, serving: Serving, info: ModelInfo = DIGITS) -> None:
    """POST /v1/models/{name}:predict: row or columnar format."""
    from service.api.routers.tfserving import _columnar_format, _row_format

    def decode() -> Any:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None  # answered as TF Serving's "JSON Parse error"
        if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
            return None
        if "instances" in body:
            return _row_format(body["instances"], info, serving)
        return _columnar_format(body["inputs"], info, serving)

    _checked_batch(_refused(decode, "a TF Serving body"), info)


def open_inference_body(data: bytes, header_length: str | None, serving: Serving, info: ModelInfo = DIGITS) -> None:
    """POST /v2/models/{name}/infer: JSON tensors, or the binary tensor data extension."""
    from service.api.routers.v2 import _binary_output, _input_tensor, _split_body

    def decode() -> Any:
        request, binary = _split_body(data, header_length)
        x = _input_tensor(request, binary, info, serving)
        _binary_output(request, info)
        return x

    _checked_batch(_refused(decode, "an inference request"), info)


def train_spec(data: bytes) -> None:
    """POST /train's body: refused by validation or by the dry build with a path, or a model Keras builds."""
    from pydantic import ValidationError

    from service.datasets import BUILTIN_DATASETS
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


def serving_for_fuzzing(home: Path) -> Serving:
    return Serving(Settings(home=home, max_predict_instances=64))
