"""POST /predict: run a stored model on a batch of instances, sent as JSON or as a .npy array.

The route reads the body itself (orjson, or the .npy bytes in place) rather than through FastAPI's JSON and
Pydantic validation: for a request that is one big array of numbers, parsing is most of the work. The schema
/docs shows is declared in ``openapi_extra``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from service.api.body_buffers import BodyBytes
from service.api.errors import ApiError, item, responses, validation_error
from service.api.predictor import (
    FloatArray,
    LoadedModel,
    PredictError,
    Serving,
    batch_from_json,
    batch_from_npy,
    classes_of,
)
from service.api.schemas import PredictRequest, PredictResponse
from service.registry import ModelRef, parse_reference

router = APIRouter(tags=["prediction"])

NPY = "application/x-npy"
FIELDS = ("model_id", "model", "instances")

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


def serving_of(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


def api_error(exc: PredictError) -> ApiError:
    """A PredictError in this API's own error shape."""
    if exc.kind == "invalid_input":
        return validation_error([item(list(exc.loc), exc.message)])
    status, kind = {
        "not_found": (404, "not_found"),
        "too_many_instances": (413, "too_many_instances"),
        "store_error": (500, "store_error"),
    }[exc.kind]
    return ApiError(status, kind, exc.message, [item(list(exc.loc), exc.message)] if exc.loc else [])


def _reference(model_id: Any, model: Any, loc: tuple[str, ...] = ()) -> ModelRef:
    if (model_id is None) == (model is None):
        given = "both" if model_id is not None else "neither"
        raise validation_error(
            [item([*loc, "model_id"], f"give 'model_id' or 'model' (a name or name@version), not {given}")]
        )
    for key, value in (("model_id", model_id), ("model", model)):
        if value is not None and (not isinstance(value, str) or not value):
            raise validation_error([item([*loc, key], f"{key} must be a non-empty string (received {value!r})")])
    return ModelRef(model_id=model_id) if model_id is not None else parse_reference(model)


def _json_request(body: BodyBytes) -> tuple[ModelRef, list[Any]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise validation_error([item(["body"], f"the body is not valid JSON: {exc}")]) from exc
    if not isinstance(data, dict):
        raise validation_error([item(["body"], 'the body must be a JSON object: {"model_id" or "model", "instances"}')])
    problems = [item([key], f"unknown field {key!r}") for key in data if key not in FIELDS]
    instances = data.get("instances")
    if instances is None:
        problems.append(item(["instances"], "field required"))
    elif not isinstance(instances, list):
        problems.append(
            item(["instances"], f"instances must be a list, one entry per instance (received {instances!r:.40})")
        )
    elif not instances:
        problems.append(item(["instances"], "List should have at least 1 item after validation, not 0"))
    if problems:
        raise validation_error(problems)
    assert isinstance(instances, list)
    return _reference(data.get("model_id"), data.get("model")), instances


def _answer(loaded: LoadedModel, outputs: FloatArray, accept: str) -> Response:
    info = loaded.info
    if NPY in accept:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, outputs, allow_pickle=False)
        headers = {"X-Model-Id": info.model_id, "X-Model-Version": str(info.version)}
        return Response(buffer.getvalue(), media_type=NPY, headers=headers)
    classes = classes_of(outputs)
    labels = [info.class_names[c] for c in classes] if info.class_names else None
    content = {
        "model_id": info.model_id,
        "name": info.name,
        "version": info.version,
        "predictions": outputs,
        "classes": classes,
        "labels": labels,
    }
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


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
    serving = serving_of(request)
    body = await serving.bodies.read(request)
    try:
        if request.headers.get("content-type", "").startswith(NPY):
            query = request.query_params
            ref = _reference(query.get("model_id"), query.get("model"), ("query",))
            loaded = await serving.resolve(ref)
            x = batch_from_npy(body.data, loaded.info, serving.check_count)
        else:
            ref, instances = _json_request(body.data)
            serving.bodies.release(body)  # parsed: nothing refers to the bytes any more
            serving.check_count(len(instances), ("instances",))
            loaded = await serving.resolve(ref)
            x = batch_from_json(instances, loaded.info, "instances", ("instances",))
        outputs = await serving.predict(loaded, x)
    except PredictError as exc:
        serving.bodies.release(body)  # refused, or the model's call is over: either way x is not read again
        raise api_error(exc) from exc
    except ApiError:
        serving.bodies.release(body)  # refused before anything was computed
        raise
    serving.bodies.release(body)
    return _answer(loaded, outputs, request.headers.get("accept", ""))
