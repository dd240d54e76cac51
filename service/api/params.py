"""Path parameters shared by the routers, declared once: ids, and model names and versions as the serving protocols
write them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path
from starlette.convertors import Convertor, register_url_convertor

from service.db import ID_PATTERN
from service.registry import VERSION_PATTERN

JobId = Annotated[str, Path(description="Job id as returned by POST /train.", pattern=ID_PATTERN)]
# POST /train's and POST /experiments' header: a retried submit gets back what the first one made.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Send the same key again (after a timeout, say) to get back what the first request made "
        "instead of a second one.",
    ),
]
ExperimentId = Annotated[str, Path(description="Experiment id as returned by POST /experiments.", pattern=ID_PATTERN)]
ModelId = Annotated[str, Path(description="Model id, from a succeeded job.", pattern=ID_PATTERN)]
DatasetId = Annotated[
    str, Path(description="An uploaded dataset's id, or a built-in dataset's name (e.g. digits).", max_length=64)
]
ModelName = Annotated[str, Path(description="The model's name.")]
ModelVersion = Annotated[str, Path(description="A version of that name: 1, 2, 3…", pattern=VERSION_PATTERN)]


class ServableName(Convertor[str]):
    """A model's name in a TF Serving path: anything but '/' and ':', which ends it in ``/v1/models/{name}:predict``
    (so ``GET /v1/models/m:predict`` is no model's status). Used as ``{name:servable}``."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class ServableVersion(ServableName):
    """A version in a TF Serving path: digits (so ``GET /v1/models/m/versions/1:predict`` is no version's status).
    Used as ``{version:servable_version}``."""

    regex = "[0-9]+"


register_url_convertor("servable", ServableName())
register_url_convertor("servable_version", ServableVersion())
ServableModelName = Annotated[
    str, Path(description="The model's name (in these paths, without ':').", pattern="^[^/:]+$")
]
