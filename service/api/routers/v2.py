"""The Open Inference Protocol (KServe v2, Triton) over HTTP/REST, so its clients work unchanged.

Server and model metadata, liveness and readiness, and ``/infer`` with JSON tensors (``data`` flat or nested,
row-major) and Triton's binary tensor data extension, which ``tritonclient.http`` uses by default: the JSON
header is followed by raw little-endian tensor bytes, its length in ``Inference-Header-Content-Length``.
Every model has one input, ``input`` (FP32, ``[-1, *input_shape]``), and one output, ``output``. Errors are
``{"error": "..."}``. Inputs are in the dataset's units, as for POST /predict.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import text

from service.api.body_buffers import BodyBytes
from service.api.deps import ServingDep
from service.api.predictor import (
    INPUT_NAME,
    OUTPUT_NAME,
    FloatArray,
    LoadedModel,
    ModelInfo,
    PredictError,
    Serving,
    check_finite,
    invalid,
)
from service.db import session_factory
from service.registry import VERSION_PATTERN, ModelRef, parse_version

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

STATUS = {"not_found": 404, "invalid_input": 400, "too_many_instances": 413, "store_error": 500}
HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPE = "FP32"
PLATFORM = "keras_tensorflow"
EXTENSIONS = ["binary_tensor_data"]

Name = Annotated[str, Path(description="The model's name.")]
Version = Annotated[str, Path(description="A version of that name: 1, 2, 3…", pattern=VERSION_PATTERN)]

ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {400: ERROR, 404: ERROR, 413: ERROR, 500: ERROR}
_PARAMETERS = {"type": "object", "description": "Extension parameters, e.g. binary_data_size."}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The inference request as JSON. With the binary tensor data extension (what "
        "`tritonclient.http` sends by default) the JSON is followed by the raw little-endian tensor bytes, the "
        f"JSON's length in the `{HEADER_LENGTH}` header, and the input's `parameters.binary_data_size` in place of "
        "`data`.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": _PARAMETERS,
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string", "enum": [INPUT_NAME]},
                                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                    "datatype": {"type": "string", "enum": [DATATYPE]},
                                    "data": {"type": "array", "description": "Row-major, flat or nested."},
                                    "parameters": _PARAMETERS,
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string", "enum": [OUTPUT_NAME]},
                                    "parameters": _PARAMETERS,
                                },
                            },
                        },
                    },
                },
                "example": {
                    "inputs": [{"name": INPUT_NAME, "shape": [1, 8, 8], "datatype": DATATYPE, "data": [0.0] * 64}]
                },
            },
        },
    }
}


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def _error(exc: PredictError) -> Response:
    return _json({"error": exc.message}, STATUS[exc.kind])


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    version = parse_version(text)
    if version is None:
        raise invalid(f"model version must be a whole number (received {text!r})")
    return version


def _unknown(name: str, version: int | None) -> PredictError:
    what = f"version {version} of model {name!r}" if version is not None else f"model {name!r}"
    return PredictError("not_found", f"Request for unknown model: {what} is not found")


@router.get("")
async def server_metadata(request: Request) -> Response:
    return _json({"name": "trainserve", "version": request.app.version, "extensions": EXTENSIONS})


@router.get("/health/live")
async def live() -> Response:
    return _json({"live": True})


def _database_answers(url: str) -> bool:
    try:
        with session_factory(url)() as session:
            session.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


@router.get("/health/ready", responses={503: {}})
async def ready(serving: ServingDep) -> Response:
    """Ready when the database answers: models are found there and loaded on their first request."""
    ok = await run_in_threadpool(_database_answers, serving.settings.database_url)
    return _json({"ready": ok}, 200 if ok else 503)


async def _find(serving: Serving, name: str, version: str | None) -> tuple[ModelInfo, list[ModelInfo]]:
    number = _version(version)
    infos = await serving.versions(name)
    chosen = [info for info in infos if number is None or info.version == number]
    if not chosen:
        raise _unknown(name, number)
    return chosen[0], infos


def _metadata(info: ModelInfo, infos: list[ModelInfo]) -> dict[str, Any]:
    return {
        "name": info.name,
        "versions": [str(i.version) for i in infos],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, *info.input_shape]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, *info.output_shape]}],
    }


@router.get("/models/{name}", responses=RESPONSES)
async def model_metadata(name: Name, serving: ServingDep) -> Response:
    """The latest version's inputs and outputs, and every version of the name."""
    try:
        return _json(_metadata(*await _find(serving, name, None)))
    except PredictError as exc:
        return _error(exc)


@router.get("/models/{name}/versions/{version}", responses=RESPONSES)
async def version_metadata(name: Name, version: Version, serving: ServingDep) -> Response:
    try:
        return _json(_metadata(*await _find(serving, name, version)))
    except PredictError as exc:
        return _error(exc)


@router.get("/models/{name}/ready", responses=RESPONSES)
async def model_ready(name: Name, serving: ServingDep) -> Response:
    """200 when the model can answer (it is loaded now if it was not)."""
    return await _ready(serving, name, None)


@router.get("/models/{name}/versions/{version}/ready", responses=RESPONSES)
async def version_ready(name: Name, version: Version, serving: ServingDep) -> Response:
    return await _ready(serving, name, version)


async def _ready(serving: Serving, name: str, version: str | None) -> Response:
    try:
        loaded = await serving.resolve(ModelRef(name=name, version=_version(version)))
    except PredictError as exc:
        if exc.kind == "not_found":
            exc = _unknown(name, _version(version))
        return _error(exc)
    return _json({"name": loaded.info.name, "ready": True})


def _split_body(body: BodyBytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON header and the binary section that follows it (empty without the binary extension)."""
    size = len(body)
    if header_length is not None:
        if not header_length.isascii() or not header_length.isdigit() or int(header_length) > len(body):
            raise invalid(f"{HEADER_LENGTH} is {header_length!r}; the body has {len(body)} bytes")
        size = int(header_length)
    try:
        request = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise invalid(f"failed to parse the request JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise invalid("the inference request must be a JSON object with 'inputs'")
    return request, memoryview(body)[size:]


def _input_tensor(request: dict[str, Any], binary: memoryview, info: ModelInfo, serving: Serving) -> FloatArray:
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("the inference request needs 'inputs': a list of tensors")
    names = [tensor.get("name") if isinstance(tensor, dict) else None for tensor in inputs]
    if names != [INPUT_NAME]:
        unexpected = [n for n in names if n != INPUT_NAME]
        if unexpected:
            raise invalid(
                f"unexpected inference input {unexpected[0]!r} for model {info.name!r}; its one input is {INPUT_NAME!r}"
            )
        raise invalid(f"expected 1 input for model {info.name!r}, got {len(names)}")
    tensor: dict[str, Any] = inputs[0]
    datatype = tensor.get("datatype")
    if datatype != DATATYPE:
        raise invalid(
            f"inference input {INPUT_NAME!r} data-type is {datatype!r}, but model {info.name!r} expects {DATATYPE!r}"
        )
    shape = tensor.get("shape")
    expected = [-1, *info.input_shape]
    if (
        not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)
        or len(shape) != len(expected)
        or shape[1:] != expected[1:]
        or shape[0] < 1
    ):
        raise invalid(
            f"unexpected shape for input {INPUT_NAME!r} for model {info.name!r}. Expected {expected}, got {shape}"
        )
    serving.check_count(shape[0])
    count = int(np.prod(shape))
    parameters = tensor.get("parameters") or {}
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is not None:
        if binary_size != count * 4 or len(binary) != binary_size:
            raise invalid(
                f"input {INPUT_NAME!r} has {binary_size} bytes of binary data (body: {len(binary)}); "
                f"shape {shape} of {DATATYPE} needs {count * 4}"
            )
        x = np.frombuffer(binary, dtype="<f4").reshape(shape)
    else:
        if "data" not in tensor:
            raise invalid(f"input {INPUT_NAME!r} has neither 'data' nor binary data")
        try:
            with np.errstate(over="ignore"):  # beyond float32's range is infinity, refused below
                x = np.asarray(tensor["data"], dtype=np.float32)
        except (ValueError, TypeError, OverflowError) as exc:
            raise invalid(f"input {INPUT_NAME!r} data must be {DATATYPE} numbers: {exc}") from exc
        if x.size != count:
            raise invalid(f"input {INPUT_NAME!r} has {x.size} elements in 'data'; its shape {shape} needs {count}")
        x = x.reshape(shape)
    return check_finite(np.ascontiguousarray(x, dtype=np.float32), f"input {INPUT_NAME!r}", ())


def _binary_output(request: dict[str, Any], info: ModelInfo) -> bool:
    """Whether the client asked for the output as binary data (per output, or for all outputs)."""
    outputs = request.get("outputs")
    if outputs is None:
        parameters = request.get("parameters") or {}
        return bool(isinstance(parameters, dict) and parameters.get("binary_data_output", False))
    if not isinstance(outputs, list):
        raise invalid("'outputs' must be a list of requested outputs")
    binary = False
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name != OUTPUT_NAME:
            raise invalid(
                f"unexpected inference output {name!r} for model {info.name!r}; its output is {OUTPUT_NAME!r}"
            )
        parameters = output.get("parameters") or {}
        if isinstance(parameters, dict):
            if "classification" in parameters:
                raise invalid("the classification extension is not supported; read the output's probabilities")
            binary = bool(parameters.get("binary_data", False))
    return binary


def _answer(request: dict[str, Any], loaded: LoadedModel, outputs: FloatArray, binary: bool) -> Response:
    info = loaded.info
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": list(outputs.shape)}
    answer: dict[str, Any] = {"model_name": info.name, "model_version": str(info.version)}
    if isinstance(request.get("id"), str):
        answer["id"] = request["id"]
    answer["outputs"] = [output]
    if not binary:
        output["data"] = outputs.reshape(-1)
        return _json(answer)
    data = outputs.astype("<f4", copy=False).tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps(answer)
    return Response(
        header + data,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


async def _infer(request: Request, name: str, version: str | None) -> Response:
    serving: Serving = request.app.state.serving
    try:
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise invalid(f"compressed request bodies (Content-Encoding: {encoding}) are not supported")
        received = await serving.bodies.read(request)
        try:
            body, binary = _split_body(received.data, request.headers.get(HEADER_LENGTH))
            try:
                loaded = await serving.resolve(ModelRef(name=name, version=_version(version)))
            except PredictError as exc:
                raise _unknown(name, _version(version)) if exc.kind == "not_found" else exc from None
            x = _input_tensor(body, binary, loaded.info, serving)
            binary_output = _binary_output(body, loaded.info)
            outputs = await serving.predict(loaded, x)
        finally:
            serving.bodies.release(received)  # the model's call is over: nothing reads the binary section again
    except PredictError as exc:
        return _error(exc)
    return _answer(body, loaded, outputs, binary_output)


@router.post("/models/{name}/infer", responses=RESPONSES, openapi_extra=INFER_BODY)
async def infer(name: Name, request: Request) -> Response:
    """Run the latest version of the model on the `input` tensor; answers the `output` tensor."""
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", responses=RESPONSES, openapi_extra=INFER_BODY)
async def infer_version(name: Name, version: Version, request: Request) -> Response:
    return await _infer(request, name, version)
