"""TensorFlow Serving's REST API: ``/v1/models/{name}[/versions/{v}]``, ``.../metadata`` and ``...:predict``.

Thin routes over the protocol's codec (service.serving.codecs.tfserving) and the engine. A model's versions are its
name's versions; without one, the latest answers. Inputs are in the dataset's units, as for POST /predict.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.deps import EngineDep
from service.api.exchange import Answer, Exchange, respond
from service.api.params import ModelVersion, ServableModelName
from service.registry import ModelRef
from service.serving.codecs import shared, tfserving
from service.serving.codecs.tfserving import INPUT_NAME, SIGNATURE
from service.serving.engine import Engine, ModelInfo
from service.serving.errors import ModelNotFoundError

router = APIRouter(prefix="/v1/models", tags=["TensorFlow Serving"])


Name = ServableModelName
Version = ModelVersion
RESPONSES = shared.OPENAPI_ERRORS
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


def _json(content: Any) -> Response:
    return Response(shared.encode(content), media_type="application/json")


async def _infos(engine: Engine, name: str, version_text: str | None) -> list[ModelInfo]:
    """A name's versions, newest first (only the one asked for, when one is)."""
    version = tfserving.version_of(version_text)
    infos = await engine.versions(name)
    if version is not None:
        infos = [info for info in infos if info.version == version]
    if not infos:
        raise ModelNotFoundError(f"Servable not found for request: {tfserving.servable(name, version)}")
    return infos


@router.get("/{name:servable}", responses=RESPONSES)
async def model_status(name: Name, engine: EngineDep) -> Response:
    """The model's versions, each `AVAILABLE` (any version is loaded on its first request)."""
    return _json(tfserving.statuses(await _infos(engine, name, None)))


@router.get("/{name:servable}/versions/{version:servable_version}", responses=RESPONSES)
async def version_status(name: Name, version: Version, engine: EngineDep) -> Response:
    return _json(tfserving.statuses(await _infos(engine, name, version)))


@router.get("/{name:servable}/metadata", responses=RESPONSES)
async def model_metadata(name: Name, engine: EngineDep) -> Response:
    """The `serving_default` signature: input `input` and output `output`, float32, batch first."""
    return _json(tfserving.metadata(await _infos(engine, name, None)))


@router.get("/{name:servable}/versions/{version:servable_version}/metadata", responses=RESPONSES)
async def version_metadata(name: Name, version: Version, engine: EngineDep) -> Response:
    return _json(tfserving.metadata(await _infos(engine, name, version)))


async def answer(exchange: Exchange) -> Answer:
    """The handler of both `:predict` routes: the latest version, or the one in the path."""
    engine = exchange.engine
    try:
        parsed = tfserving.parse(exchange.body.data)
    finally:
        exchange.release()  # parsed: nothing refers to the bytes any more
    version = tfserving.version_of(exchange.params.get("version"))
    loaded = await engine.resolve(ModelRef(name=exchange.params["name"], version=version))
    outputs = await engine.predict(loaded, tfserving.to_batch(parsed, loaded.info, engine.check_count))
    return Answer(tfserving.answer(parsed, outputs), "application/json")


@router.post("/{name:servable}:predict", responses=RESPONSES, openapi_extra=PREDICT_BODY)
async def predict(name: Name, request: Request) -> Response:
    """Predict with the latest version: `{"instances": [...]}` → `{"predictions": [...]}`, or
    `{"inputs": ...}` → `{"outputs": ...}`."""
    return await respond(request, answer)


@router.post(
    "/{name:servable}/versions/{version:servable_version}:predict", responses=RESPONSES, openapi_extra=PREDICT_BODY
)
async def predict_version(name: Name, version: Version, request: Request) -> Response:
    """Predict with one version of the model."""
    return await respond(request, answer)
