"""A prediction request as its protocol's handler sees it (its answer is the codec's ``Answer``): no Starlette
objects.

The prediction endpoints (``POST /predict``, TF Serving's ``:predict``, the Open Inference Protocol's ``/infer``)
are handlers ``Exchange → Answer``. The prediction lane (``prediction_lane``) calls them straight from the ASGI
scope; their FastAPI declarations, which /docs shows, call them through :func:`respond`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from service.api.body_buffers import Body, BodyBuffers
from service.api.middleware import framing
from service.serving.codecs.shared import Answer
from service.serving.engine import Engine

RawHeaders = list[tuple[bytes, bytes]]
NO_QUERY = QueryParams()
NO_BODY = Body(b"")


@dataclass(slots=True)
class Exchange:
    """One prediction request: its path parameters, headers and query as the server gave them, and its body,
    valid until :meth:`release`."""

    engine: Engine
    params: Mapping[str, str]
    headers: RawHeaders
    query_string: bytes
    body: Body
    bodies: BodyBuffers

    def header(self, name: bytes) -> str | None:
        """The first value of the header ``name`` (lower case, as ASGI servers give names), or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    @property
    def query(self) -> QueryParams:
        return QueryParams(self.query_string) if self.query_string else NO_QUERY

    def release(self) -> None:
        """Nothing reads the body any more: its buffer may take the next request's."""
        self.bodies.release(self.body)


__all__ = ["Answer", "Exchange", "Handler", "receive_exchange", "respond"]

Handler = Callable[[Exchange], Awaitable[Answer]]


async def receive_exchange(
    scope: Scope, receive: Receive, params: Mapping[str, str], engine: Engine, bodies: BodyBuffers
) -> Exchange:
    """The request of ``scope``, its whole body received from ``receive``."""
    length, chunked = framing(scope)
    body = await bodies.read(length, receive) if length or chunked else NO_BODY
    return Exchange(engine, params, scope["headers"], scope["query_string"], body, bodies)


async def respond(request: Request, handler: Handler) -> Response:
    """A handler's answer to a request that came through FastAPI's router; its failures go to the app's exception
    handlers, like any route's."""
    exchange = await receive_exchange(
        request.scope, request.receive, request.path_params, request.app.state.engine, request.app.state.bodies
    )
    try:
        answer = await handler(exchange)
    finally:
        exchange.release()
    return Response(answer.content, media_type=answer.media_type, headers=dict(answer.headers or {}))
