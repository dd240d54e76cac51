"""The Open Inference Protocol (KServe v2, Triton) over HTTP/REST, so its clients work unchanged: server and model
metadata, liveness and readiness, and inference with JSON tensors (``data`` flat or nested, row-major) or Triton's
binary tensor data extension, which ``tritonclient.http`` uses by default: the JSON header is followed by raw
little-endian tensor bytes, its length in ``Inference-Header-Content-Length``. Every model has one input,
``input`` (FP32, ``[-1, *input_shape]``), and one output, ``output``. Errors are ``{"error": "..."}``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.serving.codecs import shared
from service.serving.codecs.arrays import BodyBytes, FloatArray, finite_batch
from service.serving.codecs.shared import Answer
from service.serving.engine import ModelInfo
from service.serving.errors import (
    InvalidInputError,
    ServingError,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPE = "FP32"
PLATFORM = "keras_tensorflow"
EXTENSIONS = ["binary_tensor_data"]
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def error(exc: ServingError, name: str = "", version: int | None = None) -> tuple[int, bytes]:
    what = f"version {version} of model {name!r}" if version is not None else f"model {name!r}"
    return shared.error(exc, f"Request for unknown model: {what} is not found")


def version_of(text: str | None) -> int | None:
    return shared.version_of(text, "model version")


# --- metadata ---------------------------------------------------------------------------------------------------


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "trainserve", "version": version, "extensions": EXTENSIONS}


def model_metadata(info: ModelInfo, infos: list[ModelInfo]) -> dict[str, Any]:
    return {
        "name": info.name,
        "versions": [str(i.version) for i in infos],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, *info.input_shape]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, *info.output_shape]}],
    }


# --- inference --------------------------------------------------------------------------------------------------


@dataclass
class Request:
    """The JSON header of an inference request, and the binary section that follows it (empty without the binary
    extension)."""

    header: dict[str, Any]
    binary: memoryview


def parse(body: BodyBytes, header_length: str | None, content_encoding: str = "identity") -> Request:
    if content_encoding.lower() != "identity":
        raise InvalidInputError(
            f"compressed request bodies (Content-Encoding: {content_encoding[:20]}) are not supported"
        )
    size = len(body)
    if header_length is not None:
        if not header_length.isascii() or not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInputError(f"{HEADER_LENGTH} is {header_length[:20]!r}; the body has {len(body)} bytes")
        size = int(header_length)
    try:
        header = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"failed to parse the request JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidInputError("the inference request must be a JSON object with 'inputs'")
    return Request(header, memoryview(body)[size:])


def to_batch(request: Request, info: ModelInfo, check_count: Callable[[int], None]) -> FloatArray:
    """The one input tensor, as a float32 batch of the model's input shape."""
    inputs = request.header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError("the inference request needs 'inputs': a list of tensors")
    names = [tensor.get("name") if isinstance(tensor, dict) else None for tensor in inputs]
    if names != [INPUT_NAME]:
        unexpected = [n for n in names if n != INPUT_NAME]
        if unexpected:
            raise InvalidInputError(
                f"unexpected inference input {unexpected[0]!r:.60} for model {info.name!r}; its one input is "
                f"{INPUT_NAME!r}"
            )
        raise InvalidInputError(f"expected 1 input for model {info.name!r}, got {len(names)}")
    tensor: dict[str, Any] = inputs[0]
    datatype = tensor.get("datatype")
    if datatype != DATATYPE:
        raise InvalidInputError(
            f"inference input {INPUT_NAME!r} data-type is {datatype!r:.20}, but model {info.name!r} expects "
            f"{DATATYPE!r}"
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
        raise InvalidInputError(
            f"unexpected shape for input {INPUT_NAME!r} for model {info.name!r}. Expected {expected}, got {shape!r:.80}"
        )
    check_count(shape[0])
    count = int(np.prod(shape))
    parameters = tensor.get("parameters") or {}
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is not None:
        if binary_size != count * 4 or len(request.binary) != binary_size:
            raise InvalidInputError(
                f"input {INPUT_NAME!r} has {binary_size!r:.20} bytes of binary data (body: {len(request.binary)}); "
                f"shape {shape} of {DATATYPE} needs {count * 4}"
            )
        x = np.frombuffer(request.binary, dtype="<f4").reshape(shape)
    else:
        if "data" not in tensor:
            raise InvalidInputError(f"input {INPUT_NAME!r} has neither 'data' nor binary data")
        try:
            with np.errstate(over="ignore"):  # beyond float32's range is infinity, refused below
                x = np.asarray(tensor["data"], dtype=np.float32)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInputError(f"input {INPUT_NAME!r} data must be {DATATYPE} numbers: {exc}") from exc
        if x.size != count:
            raise InvalidInputError(
                f"input {INPUT_NAME!r} has {x.size} elements in 'data'; its shape {shape} needs {count}"
            )
        x = x.reshape(shape)
    return finite_batch(np.ascontiguousarray(x, dtype=np.float32), f"input {INPUT_NAME!r}", ())


def wants_binary(request: Request, info: ModelInfo) -> bool:
    """Whether the client asked for the output as binary data (per output, or for all outputs)."""
    outputs = request.header.get("outputs")
    if outputs is None:
        parameters = request.header.get("parameters") or {}
        return bool(isinstance(parameters, dict) and parameters.get("binary_data_output", False))
    if not isinstance(outputs, list):
        raise InvalidInputError("'outputs' must be a list of requested outputs")
    binary = False
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name != OUTPUT_NAME:
            raise InvalidInputError(
                f"unexpected inference output {name!r:.60} for model {info.name!r}; its output is {OUTPUT_NAME!r}"
            )
        parameters = output.get("parameters") or {}
        if isinstance(parameters, dict):
            if "classification" in parameters:
                raise InvalidInputError(
                    "the classification extension is not supported; read the output's probabilities"
                )
            binary = bool(parameters.get("binary_data", False))
    return binary


def answer(request: Request, info: ModelInfo, outputs: FloatArray, binary: bool) -> Answer:
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": list(outputs.shape)}
    content: dict[str, Any] = {"model_name": info.name, "model_version": str(info.version)}
    if isinstance(request.header.get("id"), str):
        content["id"] = request.header["id"]
    content["outputs"] = [output]
    if not binary:
        output["data"] = outputs.reshape(-1)
        return Answer(shared.encode(content), "application/json")
    data = outputs.astype("<f4", copy=False).tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps(content)
    return Answer(header + data, "application/octet-stream", {HEADER_LENGTH: str(len(header))})
