"""GET /spec/options: what a training request can choose from, for a form that builds one."""

from __future__ import annotations

import functools
import hashlib
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Response

from service.api.deps import SessionDep, SettingsDep
from service.api.errors import responses
from service.api.option_schemas import DatasetOption, Limits, Options
from service.datasets import catalogue
from service.spec.options import spec_options

router = APIRouter(prefix="/spec", tags=["training"])

IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=1000,
        description="The ETag of an earlier answer: 304 without a body while the options are still the same.",
    ),
]
CACHE_CONTROL = "no-cache"  # kept, and revalidated with the ETag: uploads come and go


@functools.cache
def _spec_part() -> dict[str, Any]:
    return spec_options().model_dump(mode="json", by_alias=True, exclude_unset=True)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/options",
    response_model=Options,
    summary="What a training request can choose from",
    responses={
        **responses(422),
        200: {
            "headers": {
                "ETag": {"description": "Of this answer.", "schema": {"type": "string"}},
                "Cache-Control": {
                    "description": "`no-cache`: keep it, and ask again with If-None-Match.",
                    "schema": {"type": "string"},
                },
            }
        },
        304: {"description": "Not modified: the options are still those of the ETag in If-None-Match."},
    },
)
def get_options(session: SessionDep, settings: SettingsDep, if_none_match: IfNoneMatch = None) -> Response:
    """Everything a training request can choose from, read from the spec's own definitions: every layer type,
    optimizer, learning-rate schedule and callback with its fields (type, default, bounds, choices, description),
    the activations, losses and metrics, the fields of the model, compile, dataset and fit parts; the datasets a job
    can use with their input shapes and classes; and the limits this service sets. What the dashboard's model
    builder is made of."""
    choices, uploads = catalogue.dataset_choices(session=session, keras_cache=settings.keras_cache)
    content = {
        **_spec_part(),
        "datasets": [DatasetOption.from_choice(choice).model_dump(mode="json") for choice in choices],
        "uploads": uploads,
        "limits": Limits.from_settings(settings).model_dump(mode="json"),
    }
    body = orjson.dumps(content)
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
