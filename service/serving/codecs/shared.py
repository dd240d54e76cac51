"""What TensorFlow Serving's REST API and the Open Inference Protocol share: an error is ``{"error": "<message>"}``,
answers are JSON with NumPy arrays in them, and a version in the path is a whole number. Each protocol keeps its own
status table and wording."""

from __future__ import annotations

from typing import Any

import orjson

from service.registry import parse_version
from service.serving.errors import InvalidInputError

ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def render(message: str) -> bytes:
    """An error body."""
    return orjson.dumps({"error": message})


def openapi_errors(statuses: set[int]) -> dict[int | str, dict[str, Any]]:
    """The error body, as /docs shows it for each of these statuses."""
    return {status: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for status in sorted(statuses)}


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
