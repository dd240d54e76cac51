"""POST /predict: run a stored model on a batch of instances."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter

from service import jobs
from service.api.deps import ModelCacheDep, SessionDep
from service.api.errors import ApiError, item, not_found, responses, validation_error
from service.api.predictor import predict as run_model
from service.api.schemas import PredictRequest, PredictResponse
from service.db import ModelRow
from service.store import StoreError

router = APIRouter(tags=["prediction"])


def instances_array(instances: list[Any], input_shape: list[int]) -> np.ndarray[Any, Any]:
    """The instances as a float32 batch of the model's input shape, or a 422 that says what was expected."""
    expected = [len(instances), *input_shape]
    try:
        x = np.asarray(instances, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise validation_error(
            [item(["instances"], f"instances must be numbers in an array of shape {expected}: {exc}")]
        ) from exc
    if list(x.shape) != expected:
        raise validation_error(
            [item(["instances"], f"instances have shape {list(x.shape)}; this model expects {expected}")]
        )
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0][0])
        raise validation_error([item(["instances", bad], "instances must be finite numbers (no NaN or Infinity)")])
    return x


def classes_of(outputs: np.ndarray[Any, Any]) -> list[int]:
    if outputs.shape[-1] == 1:  # one sigmoid unit: class 1 when p ≥ 0.5
        return [int(p >= 0.5) for p in outputs[:, 0]]
    return [int(c) for c in outputs.argmax(axis=-1)]


@router.post("/predict", response_model=PredictResponse, responses=responses(404, 422, 500))
def predict(body: PredictRequest, session: SessionDep, cache: ModelCacheDep) -> PredictResponse:
    """Predict with a trained model. Instances are in the dataset's own units: the model's preprocessing (e.g.
    `rescale`) is applied here as it was in training."""
    row: ModelRow | None = jobs.get_model(session=session, model_id=body.model_id)
    if row is None:
        raise not_found("model", body.model_id)
    x = instances_array(body.instances, row.input_shape)
    rescale = row.dataset.get("rescale")
    if rescale is not None:
        x *= np.float32(rescale)
    try:
        model = cache.get(row.id, row.sha256)
    except StoreError as exc:
        raise ApiError(500, "store_error", str(exc)) from exc
    outputs = run_model(model, x)
    classes = classes_of(outputs)
    labels = [row.class_names[c] for c in classes] if row.class_names else None
    return PredictResponse(model_id=row.id, predictions=outputs.tolist(), classes=classes, labels=labels)
