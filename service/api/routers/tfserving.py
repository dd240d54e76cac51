"""TensorFlow Serving's REST API, so its clients work unchanged: model status, metadata and predict.

As https://www.tensorflow.org/tfx/serving/api_rest documents it: ``/v1/models/{name}[/versions/{v}]``,
``.../metadata`` and ``...:predict`` with ``instances`` (row format, answered as ``predictions``) or ``inputs``
(columnar, answered as ``outputs``); errors are ``{"error": "..."}``. A model's versions are its name's versions;
without one, the latest answers. Inputs are in the dataset's units, as for POST /predict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from service.api.deps import ServingDep
from service.api.predictor import (
    INPUT_NAME,
    OUTPUT_NAME,
    FloatArray,
    ModelInfo,
    PredictError,
    Serving,
    batch_from_json,
    invalid,
)
from service.registry import VERSION_PATTERN, ModelRef, parse_version

router = APIRouter(prefix="/v1/models", tags=["TensorFlow Serving"])

STATUS = {"not_found": 404, "invalid_input": 400, "too_many_instances": 413, "store_error": 500}
SIGNATURE = "serving_default"


class ServableName(Convertor[str]):
    """A model's name in a TF Serving path: anything but '/' and ':', which ends it in ``/v1/models/{name}:predict``
    (so ``GET /v1/models/m:predict`` is no model's status)."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class ServableVersion(ServableName):
    """A version in a TF Serving path: digits (so ``GET /v1/models/m/versions/1:predict`` is no version's status)."""

    regex = "[0-9]+"


register_url_convertor("servable", ServableName())
register_url_convertor("servable_version", ServableVersion())

Name = Annotated[str, Path(description="The model's name (in these paths, without ':').", pattern="^[^/:]+$")]
Version = Annotated[str, Path(description="A version of that name: 1, 2, 3…", pattern=VERSION_PATTERN)]

ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {400: ERROR, 404: ERROR, 413: ERROR, 500: ERROR}
PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "signature_name": {"type": "string", "enum": [SIGNATURE, ""], "default": SIGNATURE},
                        "instances": {
                            "type": "array",
                            "minItems": 1,
                            "description": "Row format: one entry per instance (or {input: instance}).",
                        },
                        "inputs": {
                            "description": "Columnar format: the batch as one tensor, or {input: tensor}.",
                            "anyOf": [
                                {"type": "array", "minItems": 1},
                                {
                                    "type": "object",
                                    "properties": {INPUT_NAME: {"type": "array", "minItems": 1}},
                                    "required": [INPUT_NAME],
                                    "additionalProperties": False,
                                },
                            ],
                        },
                    },
                    "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
                },
                "example": {"instances": [[[0, 0, 5, 13, 9, 1, 0, 0]] * 8]},
            }
        },
    }
}


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    version = parse_version(text)
    if version is None:
        raise invalid(f"version must be a whole number (received {text!r})")
    return version


def _servable(name: str, version: int | None) -> str:
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


async def _infos(serving: Serving, name: str, version: int | None) -> list[ModelInfo]:
    infos = await serving.versions(name)
    if version is not None:
        infos = [info for info in infos if info.version == version]
    if not infos:
        raise PredictError("not_found", f"Servable not found for request: {_servable(name, version)}")
    return infos


def _status(info: ModelInfo) -> dict[str, Any]:
    return {"version": str(info.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


def _shape(dims: tuple[int, ...]) -> dict[str, Any]:
    return {"dim": [{"size": str(d), "name": ""} for d in (-1, *dims)], "unknown_rank": False}


def _metadata(info: ModelInfo) -> dict[str, Any]:
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


async def _about(
    serving: Serving, name: str, version: str | None, render: Callable[[list[ModelInfo]], dict[str, Any]]
) -> Response:
    """A name's versions (or one of them) rendered as TF Serving answers, or its error."""
    try:
        infos = await _infos(serving, name, _version(version))
    except PredictError as exc:
        return _error(STATUS[exc.kind], exc.message)
    return _json(render(infos))


def _statuses(infos: list[ModelInfo]) -> dict[str, Any]:
    return {"model_version_status": [_status(info) for info in infos]}


def _newest_metadata(infos: list[ModelInfo]) -> dict[str, Any]:
    return _metadata(infos[0])


@router.get("/{name:servable}", responses=RESPONSES)
async def model_status(name: Name, serving: ServingDep) -> Response:
    """The model's versions, each `AVAILABLE` (any version is loaded on its first request)."""
    return await _about(serving, name, None, _statuses)


@router.get("/{name:servable}/versions/{version:servable_version}", responses=RESPONSES)
async def version_status(name: Name, version: Version, serving: ServingDep) -> Response:
    return await _about(serving, name, version, _statuses)


@router.get("/{name:servable}/metadata", responses=RESPONSES)
async def model_metadata(name: Name, serving: ServingDep) -> Response:
    """The `serving_default` signature: input `input` and output `output`, float32, batch first."""
    return await _about(serving, name, None, _newest_metadata)


@router.get("/{name:servable}/versions/{version:servable_version}/metadata", responses=RESPONSES)
async def version_metadata(name: Name, version: Version, serving: ServingDep) -> Response:
    return await _about(serving, name, version, _newest_metadata)


def _row_format(instances: Any, info: ModelInfo, serving: Serving) -> FloatArray:
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty list, one entry per instance")
    serving.check_count(len(instances))
    if isinstance(instances[0], dict):
        rows = []
        for index, instance in enumerate(instances):
            if not isinstance(instance, dict) or set(instance) != {INPUT_NAME}:
                keys = sorted(instance) if isinstance(instance, dict) else type(instance).__name__
                raise invalid(
                    f"instance {index} has {keys}; this model's one input is named {INPUT_NAME!r} "
                    f"(or give each instance as a plain list)"
                )
            rows.append(instance[INPUT_NAME])
        instances = rows
    return batch_from_json(instances, info, "instances", ())


def _columnar_format(inputs: Any, info: ModelInfo, serving: Serving) -> FloatArray:
    if isinstance(inputs, dict):
        if set(inputs) != {INPUT_NAME}:
            raise invalid(f"'inputs' names {sorted(inputs)}; this model's one input is named {INPUT_NAME!r}")
        inputs = inputs[INPUT_NAME]
    if not isinstance(inputs, list) or not inputs:
        raise invalid("'inputs' must be a non-empty list: the batch, first dimension the instances")
    serving.check_count(len(inputs))
    return batch_from_json(inputs, info, "inputs", ())


async def _predict(request: Request, name: str, version: str | None) -> Response:
    serving: Serving = request.app.state.serving
    received = await serving.bodies.read(request)
    try:
        try:
            body = orjson.loads(received.data)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"JSON Parse error: {exc}") from exc
        finally:
            serving.bodies.release(received)  # parsed: nothing refers to the bytes any more
        if not isinstance(body, dict):
            raise invalid("the body must be a JSON object with 'instances' or 'inputs'")
        signature = body.get("signature_name", SIGNATURE)
        if signature not in (SIGNATURE, ""):
            raise invalid(f"Serving signature name: {signature!r} not found in signature def")
        if ("instances" in body) == ("inputs" in body):
            raise invalid("the body must have one of 'instances' (row format) or 'inputs' (columnar format)")
        loaded = await serving.resolve(ModelRef(name=name, version=_version(version)))
        if "instances" in body:
            x = _row_format(body["instances"], loaded.info, serving)
            return _json({"predictions": await serving.predict(loaded, x)})
        x = _columnar_format(body["inputs"], loaded.info, serving)
        return _json({"outputs": await serving.predict(loaded, x)})
    except PredictError as exc:
        if exc.kind == "not_found":
            return _error(404, f"Servable not found for request: {_servable(name, _version(version))}")
        return _error(STATUS[exc.kind], exc.message)


@router.post("/{name:servable}:predict", responses=RESPONSES, openapi_extra=PREDICT_BODY)
async def predict(name: Name, request: Request) -> Response:
    """Predict with the latest version: `{"instances": [...]}` → `{"predictions": [...]}`, or
    `{"inputs": ...}` → `{"outputs": ...}`."""
    return await _predict(request, name, None)


@router.post(
    "/{name:servable}/versions/{version:servable_version}:predict", responses=RESPONSES, openapi_extra=PREDICT_BODY
)
async def predict_version(name: Name, version: Version, request: Request) -> Response:
    """Predict with one version of the model."""
    return await _predict(request, name, version)
