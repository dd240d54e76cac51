"""TensorFlow Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest), so its clients work unchanged:
model status and metadata, and predict with ``instances`` (row format, answered as ``predictions``) or ``inputs``
(columnar, answered as ``outputs``). Errors are ``{"error": "..."}``, worded as TF Serving words them. Every model
has one input, ``input``, and one output, ``output``, in its ``serving_default`` signature."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from service.serving.codecs import shared
from service.serving.codecs.arrays import BodyBytes, FloatArray, batch_from_json, batch_from_texts
from service.serving.engine import ModelInfo
from service.serving.errors import (
    InvalidInputError,
    ServingError,
)

SIGNATURE = "serving_default"
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def error(exc: ServingError, name: str = "", version: int | None = None) -> tuple[int, bytes]:
    return shared.error(exc, f"Servable not found for request: {servable(name, version)}")


def servable(name: str, version: int | None) -> str:
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


def version_of(text: str | None) -> int | None:
    return shared.version_of(text, "version")


# --- status and metadata ----------------------------------------------------------------------------------------


def statuses(infos: list[ModelInfo]) -> dict[str, Any]:
    """GET /v1/models/{name}: every version AVAILABLE (each is loaded on its first request). ``ready`` stands beside
    TF Serving's answer for KServe's v1 clients, which read model readiness from it."""
    return {
        "model_version_status": [
            {"version": str(info.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for info in infos
        ],
        "name": infos[0].name,
        "ready": True,
    }


def _shape(dims: tuple[int, ...]) -> dict[str, Any]:
    return {"dim": [{"size": str(d), "name": ""} for d in (-1, *dims)], "unknown_rank": False}


def metadata(infos: list[ModelInfo]) -> dict[str, Any]:
    """GET /v1/models/{name}/metadata: the newest version's ``serving_default`` signature."""
    info = infos[0]
    signature = {
        "inputs": {
            INPUT_NAME: {"dtype": "DT_FLOAT", "tensor_shape": _shape(info.input_shape), "name": f"{INPUT_NAME}:0"}
        },
        "outputs": {
            OUTPUT_NAME: {"dtype": "DT_FLOAT", "tensor_shape": _shape(info.output_shape), "name": f"{OUTPUT_NAME}:0"}
        },
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    return {
        "model_spec": {"name": info.name, "signature_name": "", "version": str(info.version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
    }


# --- predict ----------------------------------------------------------------------------------------------------


@dataclass
class Request:
    format: Literal["instances", "inputs"]
    values: Any


def parse(body: BodyBytes) -> Request:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"JSON Parse error: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError("the body must be a JSON object with 'instances' or 'inputs'")
    signature = data.get("signature_name", SIGNATURE)
    if signature not in (SIGNATURE, ""):
        raise InvalidInputError(f"Serving signature name: {signature!r:.60} not found in signature def")
    if ("instances" in data) == ("inputs" in data):
        raise InvalidInputError("the body must have one of 'instances' (row format) or 'inputs' (columnar format)")
    return Request("instances", data["instances"]) if "instances" in data else Request("inputs", data["inputs"])


def to_batch(request: Request, info: ModelInfo, check_count: Callable[[int], None]) -> FloatArray:
    if request.format == "instances":
        return _row_format(request.values, info, check_count)
    return _columnar_format(request.values, info, check_count)


def answer(request: Request, outputs: FloatArray) -> bytes:
    return shared.encode({"predictions": outputs} if request.format == "instances" else {"outputs": outputs})


def _row_format(instances: Any, info: ModelInfo, check_count: Callable[[int], None]) -> FloatArray:
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError("'instances' must be a non-empty list, one entry per instance")
    check_count(len(instances))
    if isinstance(instances[0], dict):
        rows = []
        for index, instance in enumerate(instances):
            if not isinstance(instance, dict) or set(instance) != {INPUT_NAME}:
                keys = sorted(instance)[:8] if isinstance(instance, dict) else type(instance).__name__
                raise InvalidInputError(
                    f"instance {index} has {keys}; this model's one input is named {INPUT_NAME!r} "
                    f"(or give each instance as a plain list)"
                )
            rows.append(instance[INPUT_NAME])
        instances = rows
    texts = batch_from_texts(instances, info, "instances", ())
    if texts is not None:
        return texts
    return batch_from_json(instances, info, "instances", ())


def _columnar_format(inputs: Any, info: ModelInfo, check_count: Callable[[int], None]) -> FloatArray:
    if isinstance(inputs, dict):
        if set(inputs) != {INPUT_NAME}:
            raise InvalidInputError(
                f"'inputs' names {sorted(inputs)[:8]}; this model's one input is named {INPUT_NAME!r}"
            )
        inputs = inputs[INPUT_NAME]
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError("'inputs' must be a non-empty list: the batch, first dimension the instances")
    check_count(len(inputs))
    return batch_from_json(inputs, info, "inputs", ())
