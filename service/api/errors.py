"""One error shape for the whole API: ``{"error": {"type", "message", "errors": [{"path", "loc", "message"}]}}``."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorItem(BaseModel):
    path: str = Field(description="Where in the request, e.g. 'model.layers[1].activation'.", examples=["model"])
    loc: list[str | int] = Field(description="The same place as a list of keys and indexes.")
    message: str


class ErrorBody(BaseModel):
    type: str = Field(description="A stable machine-readable kind, e.g. 'validation_error', 'not_found'.")
    message: str
    errors: list[ErrorItem] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route, so /docs shows the error shape for each of its error codes."""
    return {code: {"model": ErrorResponse} for code in codes}


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        type: str,
        message: str,
        errors: Sequence[ErrorItem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type
        self.message = message
        self.errors = list(errors)
        self.headers = headers


def not_found(kind: str, identifier: str) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} with id {identifier!r}")


def item(loc: Sequence[str | int], message: str) -> ErrorItem:
    return ErrorItem(path=format_path(loc), loc=list(loc), message=message)


def validation_error(items: Sequence[ErrorItem]) -> ApiError:
    count = len(items)
    summary = items[0].message if count == 1 else f"{count} problems in the request"
    return ApiError(422, "validation_error", summary, items)


def format_path(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_TAG_LIST = re.compile(r"'([^']*)'")


def _request_items(exc: RequestValidationError) -> list[ErrorItem]:
    body = getattr(exc, "body", None)
    return [_pydantic_item(err, body) for err in exc.errors()]


def _pydantic_item(err: dict[str, Any], body: Any) -> ErrorItem:
    """Turn one Pydantic error into a path that follows the user's JSON and a message that names the value."""
    raw = list(err.get("loc", ()))
    source = raw.pop(0) if raw and raw[0] in ("body", "query", "path", "header", "cookie") else "body"
    loc = _user_loc(raw, body if source == "body" else None)
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    message = str(err.get("msg", "invalid value"))
    if kind == "union_tag_invalid":
        expected = _TAG_LIST.findall(str(ctx.get("expected_tags", "")))
        what = "optimizer" if loc and loc[-1] == "optimizer" else "layer type"
        tag = str(ctx.get("tag"))
        close = difflib.get_close_matches(tag, expected, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(expected)}"
        message = f"unknown {what} {tag!r}; {hint}"
        loc = [*loc, "type"]
    elif kind == "union_tag_not_found":
        message = "missing 'type', which says what kind of object this is"
        loc = [*loc, "type"]
    elif kind == "extra_forbidden":
        message = f"unknown field {loc[-1]!r}" if loc else "unknown field"
    elif kind == "missing":
        message = "field required"
    elif kind == "json_invalid":
        message = f"the body is not valid JSON: {ctx.get('error', message)}"
    elif not kind.startswith("unknown_") and not isinstance(err.get("input"), dict | list) and "input" in err:
        message = f"{message} (received {err['input']!r})"
    if source != "body":
        loc = [source, *loc]
    return item(loc, message)


def _user_loc(raw: list[Any], body: Any) -> list[str | int]:
    """Drop the parts of a Pydantic location that are not in the user's JSON (union tags, validator names)."""
    loc: list[str | int] = []
    node = body
    for part in raw:
        if isinstance(part, int):
            loc.append(part)
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
        elif isinstance(node, dict):
            if part in node:
                loc.append(part)
                node = node[part]
            elif node.get("type") == part:
                continue  # the discriminated-union tag: already at the right object
            else:
                loc.append(part)  # a missing field
                node = None
        elif node is None and body is None:
            loc.append(part)  # no body to follow (query or path parameters)
        elif isinstance(node, str) and part == node:
            continue  # e.g. "adam" shorthand, whose tag is the string itself
        elif node is None:
            loc.append(part)
        # otherwise: a Pydantic-internal step such as 'function-before[...]'
    return loc


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _respond(exc.status_code, exc.type, exc.message, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(_request_items(exc))
        return _respond(error.status_code, error.type, error.message, error.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }
        headers = dict(exc.headers) if exc.headers else None
        return _respond(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail), [], headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _respond(500, "internal_error", "internal server error", [])


def _respond(
    status: int, type: str, message: str, errors: Sequence[ErrorItem], headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(type=type, message=message, errors=list(errors)))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)
