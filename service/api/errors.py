"""Errors as each protocol writes them, in one place.

The API's own shape, ``{"error": {"type", "message", "errors": [{"path", "loc", "message"}]}}``, everywhere but on
TensorFlow Serving's ``/v1`` and the Open Inference Protocol's ``/v2``, which answer ``{"error": "..."}`` and use
400 where this API uses 422 (as those servers do). Whatever raised it (a route, a body limit, the router), an error
on a path is rendered in that path's protocol. Messages are cut short and problems capped: an error never grows
with the input that caused it.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Route

from service.db import UNREACHABLE
from service.serving.codecs import shared, tfserving, v2
from service.serving.errors import (
    InvalidInputError,
    ModelNotFoundError,
    ServiceUnavailableError,
    ServingError,
    StoreIntegrityError,
    TooManyInstancesError,
)
from service.spec import SHAPE_TAGS
from service.spec.base import format_path
from service.submit import IdempotencyConflictError, InvalidRequestError, QueueUnavailableError, SubmitError

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


Protocol = Literal["native", "tfserving", "v2"]

# A message longer than this is cut; more problems than this are summed up in the last one.
MAX_MESSAGE_CHARS = 1000
JSON = "application/json"
MAX_PROBLEMS = 50

HTTP_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def protocol_of(path: str) -> Protocol:
    """Which protocol's error format a path answers in."""
    if path.startswith("/v1/"):
        return "tfserving"
    if path == "/v2" or path.startswith("/v2/"):
        return "v2"
    return "native"


def short(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_response(
    path: str,
    status: int,
    type: str,
    message: str,
    errors: Sequence[ErrorItem] = (),
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in the format of the protocol ``path`` belongs to."""
    protocol = protocol_of(path)
    if protocol != "native":
        return Response(
            shared.render(short(message)), 400 if status == 422 else status, headers=headers, media_type=JSON
        )
    items = [
        ErrorItem(
            path=short(e.path, 200),
            loc=[short(part, 100) if isinstance(part, str) else part for part in e.loc[:20]],
            message=short(e.message),
        )
        for e in errors[:MAX_PROBLEMS]
    ]
    if len(errors) > MAX_PROBLEMS:
        items[-1] = ErrorItem(path="", loc=[], message=f"… and {len(errors) - MAX_PROBLEMS + 1} more problems")
    body = ErrorResponse(error=ErrorBody(type=type, message=short(message), errors=items))
    content = body.model_dump(mode="json")
    return Response(orjson.dumps(content), status, headers=headers, media_type=JSON)


def http_error_response(path: str, exc: StarletteHTTPException) -> Response:
    """An HTTP error (a refusal of the body guard or of the API keys, the router's 404 and 405) in the format of
    the protocol of ``path``."""
    headers = dict(exc.headers) if exc.headers else None
    return error_response(
        path, exc.status_code, HTTP_KINDS.get(exc.status_code, "http_error"), str(exc.detail), [], headers
    )


# How this API's own protocol answers each failure of the serving engine.
SERVING_STATUS: dict[type[ServingError], tuple[int, str]] = {
    InvalidInputError: (422, "validation_error"),
    ModelNotFoundError: (404, "not_found"),
    TooManyInstancesError: (413, "too_many_instances"),
    StoreIntegrityError: (500, "store_error"),
    ServiceUnavailableError: (503, "database_unavailable"),
}


def serving_error_response(path: str, params: Mapping[str, str], exc: ServingError) -> Response:
    """A serving failure in the format of the protocol of ``path``; TF Serving and v2 name the model as the path
    (its parameters ``params``) does."""
    protocol = protocol_of(path)
    if protocol != "native":
        codec = tfserving if protocol == "tfserving" else v2
        name = str(params.get("name", ""))
        try:
            version = codec.version_of(params.get("version"))
        except ServingError:
            version = None
        status, content = codec.error(exc, name, version)
        return Response(content, status, media_type=JSON)
    status, kind = SERVING_STATUS.get(type(exc), (500, "internal_error"))
    if isinstance(exc, InvalidInputError):
        items = [item(list(loc), message) for loc, message in exc.problems]
        summary = exc.message if len(items) == 1 else f"{len(items)} problems in the request"
        return error_response(path, status, kind, summary, items)
    items = [item(list(exc.loc), exc.message)] if exc.loc else []
    return error_response(path, status, kind, exc.message, items)


def submit_error(exc: SubmitError) -> ApiError:
    """How this API answers each refusal of a training job."""
    if isinstance(exc, InvalidRequestError):
        return validation_error([item(list(loc), message) for loc, message in exc.problems])
    if isinstance(exc, IdempotencyConflictError):
        return ApiError(409, "idempotency_key_reused", exc.message)
    if isinstance(exc, QueueUnavailableError):
        return ApiError(503, "broker_unavailable", exc.message)
    return ApiError(500, "internal_error", exc.message)


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


_TAG_LIST = re.compile(r"'([^']*)'")


def _request_items(exc: RequestValidationError) -> list[ErrorItem]:
    body = getattr(exc, "body", None)
    return [_pydantic_item(err, body) for err in exc.errors()]


def invalid_body(exc: ValidationError, body: Any) -> ApiError:
    """A Pydantic error about a JSON body the route parsed itself, with paths that follow the user's JSON."""
    return validation_error([_pydantic_item(dict(err), body) for err in exc.errors()])


def parse_json_body(body: bytes | bytearray | memoryview) -> Any:
    """The body as JSON, or a 422 that says why it is not (malformed, not UTF-8, too deeply nested)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise validation_error([item(["body"], f"the body is not valid JSON: {exc}")]) from exc


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
        what = {"optimizer": "optimizer", "learning_rate": "schedule", "layer": "wrapped layer type"}.get(
            str(loc[-1]) if loc else "", "callback" if "callbacks" in loc else "layer type"
        )
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
            elif part in SHAPE_TAGS:
                continue  # the tag of a union told apart by the value's shape: already at the right object
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


def allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.state.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request.url.path, exc.status_code, exc.type, exc.message, exc.errors, exc.headers)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> Response:
        return serving_error_response(request.url.path, request.path_params, exc)

    @app.exception_handler(SubmitError)
    async def _submit_error(request: Request, exc: SubmitError) -> Response:
        error = submit_error(exc)
        return error_response(request.url.path, error.status_code, error.type, error.message, error.errors)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        error = validation_error(_request_items(exc))
        return error_response(request.url.path, error.status_code, error.type, error.message, error.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Every method the path takes, from every route on it: the router names only the first route's.
            headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(request))}
            exc = StarletteHTTPException(405, exc.detail, headers)
        return http_error_response(request.url.path, exc)

    async def _database_unreachable(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: the database is unreachable: %s", request.method, request.url.path, exc)
        message = "the database is unreachable; try again shortly"
        return error_response(request.url.path, 503, "database_unavailable", message, headers={"Retry-After": "5"})

    for unreachable in UNREACHABLE:
        app.add_exception_handler(unreachable, _database_unreachable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, "internal_error", "internal server error")
