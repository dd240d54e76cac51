"""POST /predict: run a stored model on a batch of instances, sent as JSON or as a .npy array.

The route reads the body itself and hands it to the protocol's codec (orjson, or the .npy bytes in place) rather
than through FastAPI's JSON and Pydantic validation: for a request that is one big array of numbers, parsing is
most of the work. The schema /docs shows is declared in ``openapi_extra``; failures are the engine's errors,
rendered by the app's handler.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.errors import responses
from service.api.exchange import Answer, Exchange, respond
from service.api.schemas import PredictRequest, PredictResponse
from service.serving.codecs import native
from service.serving.codecs.native import NPY

router = APIRouter(tags=["prediction"])

_MODEL_QUERY = {
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
}
OPENAPI: dict[str, Any] = {
    "parameters": [
        {**_MODEL_QUERY, "name": "model_id", "description": "With a .npy body: the model's id."},
        {**_MODEL_QUERY, "name": "model", "description": "With a .npy body: `name` or `name@version`."},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            NPY: {
                "schema": {"type": "string", "format": "binary"},
                "description": "A NumPy .npy array of shape (n, *input_shape); the model in the query.",
            },
        },
    },
    "responses": {"200": {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}}}},
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=responses(404, 413, 422, 500),
    openapi_extra=OPENAPI,
)
async def predict(request: Request) -> Response:
    """Predict with a trained model, named by `model_id` or by `model` (`name` for its latest version,
    `name@3` for version 3). Instances are in the dataset's own units: the model's preprocessing (e.g.
    `rescale`) is applied here as it was in training.

    Large batches go faster as a NumPy `.npy` body (`Content-Type: application/x-npy`, the model in the query:
    `/predict?model=name`); `Accept: application/x-npy` answers the predictions as `.npy` too. Concurrent
    requests for one model are computed together (see `/metrics`)."""
    return await respond(request, answer)


async def answer(exchange: Exchange) -> Answer:
    """POST /predict's handler."""
    engine = exchange.engine
    try:
        parsed = native.parse(exchange.body.data, exchange.header(b"content-type") or "", exchange.query)
        count = native.count(parsed)
        if count is not None:  # JSON: parsed, so nothing refers to the bytes any more
            exchange.release()
            engine.check_count(count, ("instances",))
        loaded = await engine.resolve(parsed.ref)
        outputs = await engine.predict(loaded, native.to_batch(parsed, loaded.info, engine.check_count))
    finally:
        exchange.release()  # the model's call is over (or never came): nothing reads the bytes again
    return native.encode(loaded.info, outputs, exchange.header(b"accept") or "")
