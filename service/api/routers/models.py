"""Trained models: records, Keras summaries and the .keras files."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, PlainTextResponse

from service import registry
from service.api import links
from service.api.deps import Limit, Offset, SessionDep, SettingsDep
from service.api.errors import ApiError, not_found, responses
from service.api.params import ModelId
from service.api.schemas import ModelList, ModelRead, ModelSummary
from service.db import ModelRow
from service.store import StoreError, verified_path

router = APIRouter(prefix="/models", tags=["models"])


def _model(session: SessionDep, model_id: str) -> ModelRow:
    row = registry.get_model(session=session, model_id=model_id)
    if row is None:
        raise not_found("model", model_id)
    return row


@router.get(
    "",
    response_model=ModelList,
    responses={**responses(422), 200: {"links": links.of_model("/data/0/model_id", "/data/0/name")}},
)
def list_models(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ModelList:
    """Models, newest first."""
    rows, count = registry.list_models(session=session, limit=limit, offset=offset)
    return ModelList(data=[ModelRead.from_row(row) for row in rows], count=count)


@router.get(
    "/{model_id}",
    response_model=ModelRead,
    responses={**responses(404), 200: {"links": links.of_model("/model_id", "/name")}},
)
def get_model(model_id: ModelId, session: SessionDep) -> ModelRead:
    return ModelRead.from_row(_model(session, model_id))


@router.get(
    "/{model_id}/summary",
    response_model=ModelSummary,
    responses={**responses(404), 200: {"content": {"text/plain": {}}}},
)
def get_summary(
    model_id: ModelId,
    session: SessionDep,
    format: Annotated[Literal["json", "text"], Query(description="`text`: only the printed table.")] = "json",
) -> ModelSummary | PlainTextResponse:
    """The model as Keras' `model.summary()` describes it: per-layer output shapes and parameter counts, the
    totals, and the printed table itself (taken by the worker from the model it trained)."""
    summary = ModelSummary.model_validate(_model(session, model_id).summary)
    if format == "text":
        return PlainTextResponse(summary.text)
    return summary


@router.get(
    "/{model_id}/download",
    response_class=FileResponse,
    responses={**responses(404, 500), 200: {"content": {"application/octet-stream": {}}}},
)
def download(model_id: ModelId, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The trained model as a `.keras` file, for `keras.models.load_model`."""
    row = _model(session, model_id)
    try:
        path = verified_path(settings.model_store, row.id, row.sha256)
    except StoreError as exc:
        raise ApiError(500, "store_error", str(exc)) from exc
    return FileResponse(path, media_type="application/octet-stream", filename=f"{row.id}.keras")
