"""The Open Inference Protocol (KServe v2, Triton) over HTTP/REST: server and model metadata, liveness and
readiness, and ``/infer``.

Thin routes over the protocol's codec (service.serving.codecs.v2) and the engine. Inputs are in the dataset's units,
as for POST /predict.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep
from service.api.exchange import Answer, Exchange, respond
from service.api.params import ModelName, ModelVersion
from service.db import session_factory
from service.registry import ModelRef
from service.serving.codecs import shared, v2
from service.serving.codecs.v2 import DATATYPE, HEADER_LENGTH, INPUT_NAME, OUTPUT_NAME
from service.serving.engine import Engine, ModelInfo
from service.serving.errors import ModelNotFoundError

HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode("latin-1")  # as ASGI servers give header names
router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

Name = ModelName
Version = ModelVersion
RESPONSES = shared.OPENAPI_ERRORS
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
    return Response(shared.encode(content), status, media_type="application/json")


def _unknown(name: str, version: int | None) -> ModelNotFoundError:
    return ModelNotFoundError(f"no model {name!r}" + ("" if version is None else f" version {version}"))


@router.get("")
async def server_metadata(request: Request) -> Response:
    return _json(v2.server_metadata(request.app.version))


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
async def ready(engine: EngineDep) -> Response:
    """Ready when the database answers: models are found there and loaded on their first request."""
    ok = await run_in_threadpool(_database_answers, engine.settings.database_url)
    return _json({"ready": ok}, 200 if ok else 503)


async def _find(engine: Engine, name: str, version_text: str | None) -> tuple[ModelInfo, list[ModelInfo]]:
    version = v2.version_of(version_text)
    infos = await engine.versions(name)
    chosen = [info for info in infos if version is None or info.version == version]
    if not chosen:
        raise _unknown(name, version)
    return chosen[0], infos


@router.get("/models/{name}", responses=RESPONSES)
async def model_metadata(name: Name, engine: EngineDep) -> Response:
    """The latest version's inputs and outputs, and every version of the name."""
    return _json(v2.model_metadata(*await _find(engine, name, None)))


@router.get("/models/{name}/versions/{version}", responses=RESPONSES)
async def version_metadata(name: Name, version: Version, engine: EngineDep) -> Response:
    return _json(v2.model_metadata(*await _find(engine, name, version)))


@router.get("/models/{name}/ready", responses=RESPONSES)
async def model_ready(name: Name, engine: EngineDep) -> Response:
    """200 when the model can answer (it is loaded now if it was not)."""
    return await _ready(engine, name, None)


@router.get("/models/{name}/versions/{version}/ready", responses=RESPONSES)
async def version_ready(name: Name, version: Version, engine: EngineDep) -> Response:
    return await _ready(engine, name, version)


async def _ready(engine: Engine, name: str, version: str | None) -> Response:
    loaded = await engine.resolve(ModelRef(name=name, version=v2.version_of(version)))
    return _json({"name": loaded.info.name, "ready": True})


async def answer(exchange: Exchange) -> Answer:
    """The handler of both `/infer` routes: the latest version, or the one in the path."""
    engine = exchange.engine
    try:
        parsed = v2.parse(
            exchange.body.data, exchange.header(HEADER_LENGTH_KEY), exchange.header(b"content-encoding") or "identity"
        )
        version = v2.version_of(exchange.params.get("version"))
        loaded = await engine.resolve(ModelRef(name=exchange.params["name"], version=version))
        x = v2.to_batch(parsed, loaded.info, engine.check_count)
        binary = v2.wants_binary(parsed, loaded.info)
        outputs = await engine.predict(loaded, x)
    finally:
        exchange.release()  # the model's call is over: nothing reads the binary section again
    return v2.answer(parsed, loaded.info, outputs, binary)


@router.post("/models/{name}/infer", responses=RESPONSES, openapi_extra=INFER_BODY)
async def infer(name: Name, request: Request) -> Response:
    """Run the latest version of the model on the `input` tensor; answers the `output` tensor."""
    return await respond(request, answer)


@router.post("/models/{name}/versions/{version}/infer", responses=RESPONSES, openapi_extra=INFER_BODY)
async def infer_version(name: Name, version: Version, request: Request) -> Response:
    return await respond(request, answer)
