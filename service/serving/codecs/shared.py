"""What the protocols share: an answer (:class:`Answer`); and for TensorFlow Serving's REST API and the Open
Inference Protocol, an error is ``{"error": "<message>"}``, answers are JSON with NumPy arrays in them, and a version
in the path is a whole number. Each protocol keeps its own
wording for a model that is not there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from service.registry import parse_version
from service.serving.errors import (
    InvalidInputError,
    ModelNotFoundError,
    ServiceUnavailableError,
    ServingError,
    StoreIntegrityError,
    TooManyInstancesError,
)

ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
# The status of each failure, as TF Serving and the Open Inference Protocol's servers answer it.
STATUS: dict[type[ServingError], int] = {
    ModelNotFoundError: 404,
    InvalidInputError: 400,
    TooManyInstancesError: 413,
    StoreIntegrityError: 500,
    ServiceUnavailableError: 503,
}
# The error body, as /docs shows it for each status above.
OPENAPI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for status in sorted(set(STATUS.values()))
}


@dataclass(slots=True)
class Answer:
    """A protocol's 200 answer: its bytes, their media type and any other headers."""

    content: bytes
    media_type: str
    headers: Mapping[str, str] | None = None


def render(message: str) -> bytes:
    """An error body."""
    return orjson.dumps({"error": message})


def error(exc: ServingError, not_found: str) -> tuple[int, bytes]:
    """The status and body of a failure; a missing model is answered with the protocol's own ``not_found``."""
    if isinstance(exc, ModelNotFoundError):
        return 404, render(not_found)
    return STATUS.get(type(exc), 500), render(exc.message)


def encode(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def version_of(text: str | None, what: str = "version") -> int | None:
    """The version a path names, None for none, InvalidInputError for one that is not a whole number."""
    if text is None:
        return None
    version = parse_version(text)
    if version is None:
        raise InvalidInputError(f"{what} must be a whole number (received {text[:40]!r})")
    return version
