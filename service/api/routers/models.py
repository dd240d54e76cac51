"""Trained models: records, Keras summaries and the .keras files."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from service import exports, registry
from service.api import links
from service.api.deps import Limit, Offset, SessionDep, SettingsDep
from service.api.errors import (
    ApiError,
    invalid_body,
    item,
    not_found,
    parse_json_body,
    responses,
    validation_error,
)
from service.api.params import ModelId
from service.api.schemas import ModelList, ModelRead, ModelSummary
from service.db import ModelRow
from service.exports import Format
from service.inspection import Activations, InspectionError, Inspector, LayerWeights, answer_bytes, layer_names
from service.serving.codecs.arrays import batch_from_json, batch_from_texts
from service.serving.engine import ModelInfo
from service.serving.errors import InvalidInputError
from service.store import StoreError, model_key, model_store

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
    name: Annotated[str | None, Query(min_length=1, max_length=200, description="Only this name's versions.")] = None,
    version: Annotated[int | None, Query(ge=1, le=10**15 - 1, description="With name: only this version.")] = None,
) -> ModelList:
    """Models, newest first; `?name=` for one name's versions (`&version=` for one of them)."""
    rows, count = registry.list_models(session=session, limit=limit, offset=offset, name=name, version=version)
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


DOWNLOADS = {
    "keras": ("application/octet-stream", ".keras"),
    "savedmodel": ("application/gzip", ".savedmodel.tar.gz"),
    "litert": ("application/octet-stream", ".tflite"),
    "weights": ("application/octet-stream", ".weights.h5"),
}


@router.get(
    "/{model_id}/download",
    response_class=Response,
    responses={
        **responses(404, 409, 422, 500),
        200: {"content": {"application/octet-stream": {}, "application/gzip": {}}},
    },
)
def download(
    model_id: ModelId,
    session: SessionDep,
    settings: SettingsDep,
    format: Annotated[
        Format,
        Query(
            description="`keras`: the `.keras` file, for `keras.models.load_model`. `savedmodel`: a `.tar.gz` of "
            "the SavedModel in TensorFlow Serving's `<name>/<version>/` layout; its `serving_default` takes "
            "`input` in the dataset's units (the rescale applied inside) and answers `output`, as "
            "`/v1/models/{name}:predict` does. `litert`: the LiteRT (TFLite) flatbuffer, the same signature. "
            "`weights`: `model.save_weights`' `.weights.h5`, for the same architecture (inputs after the rescale, "
            "as the `.keras` model takes them). 409 when the model has no such export, saying why."
        ),
    ] = "keras",
) -> Response:
    """The trained model, in the format asked for (see *Exports* in the README)."""
    row = _model(session, model_id)
    media_type, suffix = DOWNLOADS[format]
    filename = f"{row.id}{suffix}"
    store = model_store(settings)
    try:
        if format == "keras":
            path = store.local(model_key(row.id), row.sha256, f"file of model {row.id}")
        elif format == "savedmodel":
            sha256 = exports.recorded(row.exports, format, row.id)
            archive = exports.savedmodel_archive(store, row.id, sha256, name=row.name, version=row.version)
            headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
            return StreamingResponse(archive, media_type=media_type, headers=headers)
        elif format == "litert":
            rescale = row.dataset.get("rescale")
            sha256 = exports.litert_sha256(row.litert, None if rescale is None else float(rescale), row.id)
            path = exports.verified_export(store, row.id, format, sha256)
        else:
            sha256 = exports.recorded(row.exports, format, row.id)
            path = exports.verified_export(store, row.id, format, sha256)
    except exports.ExportUnavailableError as exc:
        raise ApiError(409, "export_unavailable", str(exc), [item(["query", "format"], str(exc))]) from exc
    except StoreError as exc:
        raise ApiError(500, "store_error", str(exc)) from exc
    return FileResponse(path, media_type=media_type, filename=filename)


def _inspector(request: Request) -> Inspector:
    inspector: Inspector | None = getattr(request.app.state, "inspector", None)
    if inspector is None:
        inspector = request.app.state.inspector = Inspector(model_store(request.app.state.settings))
    return inspector


def check_answer_size(row: ModelRow, names: list[str], limit: int) -> None:
    """Refuse, before the model runs, outputs whose answer would be larger than the service sends."""
    size = answer_bytes(row, names)
    if size > limit:
        raise validation_error(
            [
                item(
                    ["layers"],
                    f"the outputs of {len(names)} layer{'s' if len(names) != 1 else ''} would make an answer of about "
                    f"{size:,} bytes, more than this service sends (TRAINSERVE_MAX_RESPONSE_BYTES: {limit:,}); ask "
                    f"for fewer layers",
                )
            ]
        )


def _refused(exc: InspectionError | InvalidInputError) -> ApiError:
    return validation_error([item(list(exc.loc), exc.message)])


@router.get(
    "/{model_id}/layers/{layer_name}/weights",
    response_model=LayerWeights,
    responses=responses(404, 422),
)
def layer_weights(
    model_id: ModelId,
    layer_name: Annotated[str, Path(max_length=200, description="The layer's name, as the summary shows it.")],
    request: Request,
    session: SessionDep,
    untrained: Annotated[
        bool, Query(description="The same layer freshly initialised, as an untrained model of the same spec has it.")
    ] = False,
    seed: Annotated[
        int | None, Query(ge=0, le=2**31 - 1, description="With untrained: its initialisation seed.")
    ] = None,
    bins: Annotated[int, Query(ge=1, le=200, description="Histogram bins.")] = 10,
    channel: Annotated[int, Query(ge=0, le=65_535, description="A convolution kernel's input channel to draw.")] = 0,
) -> LayerWeights:
    """A layer's weights as the book looks at them: each variable's shape, mean, standard deviation, range and
    histogram; a convolution kernel also as one small image per filter. `untrained=true` answers the same for the
    layer freshly initialised, to compare with."""
    row = _model(session, model_id)
    try:
        return _inspector(request).weights(row, layer_name, untrained=untrained, bins=bins, channel=channel, seed=seed)
    except InspectionError as exc:
        if exc.loc == ("layer",):
            raise ApiError(404, "not_found", exc.message, [item(["layer_name"], exc.message)]) from exc
        raise _refused(exc) from exc


class ActivationsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    instance: list[Any] | str = Field(
        description="One instance, as /predict takes instances: numbers of the model's input shape in the dataset's "
        "units (its rescale is applied), or a text for a model trained on texts."
    )
    layers: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=100, description="Layer names; default: every layer."
    )


ACTIVATIONS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ActivationsRequest.model_json_schema()}},
    }
}


@router.post(
    "/{model_id}/activations",
    response_model=Activations,
    responses=responses(404, 422),
    openapi_extra=ACTIVATIONS_BODY,
)
async def activations(model_id: ModelId, request: Request, session: SessionDep) -> Activations:
    """What the chosen layers output for one instance, from a sub-model that runs from the model's input to them
    (`keras.Model(model.inputs, [layer.output, …])`); a convolution's feature maps also as one image per channel."""
    raw = parse_json_body(await request.body())
    try:
        body = ActivationsRequest.model_validate(raw)
    except ValidationError as exc:
        raise invalid_body(exc, raw) from exc
    return await run_in_threadpool(partial(_activations, model_id, body, request, session))


def _activations(model_id: str, body: ActivationsRequest, request: Request, session: Session) -> Activations:
    row = _model(session, model_id)
    info = ModelInfo.from_row(row)
    try:
        values = [body.instance]
        x = batch_from_texts(values, info, "instances", ("instance",))
        if x is None:
            x = batch_from_json(values, info, "instances", ("instance",))
        if info.rescale is not None:
            x = x * info.rescale
        names = body.layers or layer_names(row)
        check_answer_size(row, names, request.app.state.settings.max_response_bytes)
        return Activations(model_id=row.id, outputs=_inspector(request).activations(row, x, names))
    except (InspectionError, InvalidInputError) as exc:
        raise _refused(exc) from exc
