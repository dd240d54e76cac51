"""POST /predict's own protocol: ``{"model_id" | "model", "instances"}`` as JSON, or a ``.npy`` body with the
model in the query; answered as JSON (predictions, classes, labels) or, asked with ``Accept``, as ``.npy``. Its
errors are the API's own shape, rendered by the API with the problems' paths."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.registry import ModelRef, parse_reference
from service.serving.codecs.arrays import (
    BodyBytes,
    FloatArray,
    batch_from_json,
    batch_from_npy,
    batch_from_texts,
    classes_of,
)
from service.serving.codecs.shared import Answer
from service.serving.engine import ModelInfo
from service.serving.errors import InvalidInputError, Loc

NPY = "application/x-npy"
FIELDS = ("model_id", "model", "instances")


@dataclass
class Request:
    """What a predict request names and carries: JSON instances, or a .npy body read in place."""

    ref: ModelRef
    instances: list[Any] | None = None
    npy: BodyBytes | None = None


def reference(model_id: Any, model: Any, loc: Loc = ()) -> ModelRef:
    if (model_id is None) == (model is None):
        given = "both" if model_id is not None else "neither"
        raise InvalidInputError(f"give 'model_id' or 'model' (a name or name@version), not {given}", (*loc, "model_id"))
    for key, value in (("model_id", model_id), ("model", model)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidInputError(f"{key} must be a non-empty string (received {value!r:.60})", (*loc, key))
    return ModelRef(model_id=model_id) if model_id is not None else parse_reference(model)


def parse(body: BodyBytes, content_type: str, query: Mapping[str, str]) -> Request:
    """The reference and the instances of a request, before the model is known."""
    if content_type.startswith(NPY):
        return Request(reference(query.get("model_id"), query.get("model"), ("query",)), npy=body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"the body is not valid JSON: {exc}", ("body",)) from exc
    if not isinstance(data, dict):
        raise InvalidInputError('the body must be a JSON object: {"model_id" or "model", "instances"}', ("body",))
    problems: list[tuple[Loc, str]] = [((key,), f"unknown field {key!r:.60}") for key in data if key not in FIELDS]
    instances = data.get("instances")
    if instances is None:
        problems.append((("instances",), "field required"))
    elif not isinstance(instances, list):
        problems.append(
            (("instances",), f"instances must be a list, one entry per instance (received {instances!r:.40})")
        )
    elif not instances:
        problems.append((("instances",), "List should have at least 1 item after validation, not 0"))
    if problems:
        first_loc, first = problems[0]
        message = first if len(problems) == 1 else f"{len(problems)} problems in the request"
        raise InvalidInputError(message, first_loc, problems)
    assert isinstance(instances, list)
    return Request(reference(data.get("model_id"), data.get("model")), instances=instances)


def count(request: Request) -> int | None:
    """How many instances a JSON request carries (a .npy body says so in its header, read with the model)."""
    return None if request.instances is None else len(request.instances)


def to_batch(request: Request, info: ModelInfo, check_count: Callable[[int], None]) -> FloatArray:
    if request.npy is not None:
        return batch_from_npy(request.npy, info, check_count)
    assert request.instances is not None
    texts = batch_from_texts(request.instances, info, "instances", ("instances",))
    if texts is not None:
        return texts
    return batch_from_json(request.instances, info, "instances", ("instances",))


def encode(info: ModelInfo, outputs: FloatArray, accept: str) -> Answer:
    if NPY in accept:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, outputs, allow_pickle=False)
        headers = {"X-Model-Id": info.model_id, "X-Model-Version": str(info.version)}
        return Answer(buffer.getvalue(), NPY, headers)
    classes = classes_of(outputs).tolist()
    labels = [info.class_names[c] for c in classes] if info.class_names else None
    content = {
        "model_id": info.model_id,
        "name": info.name,
        "version": info.version,
        "predictions": outputs,
        "classes": classes,
        "labels": labels,
    }
    return Answer(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), "application/json")
