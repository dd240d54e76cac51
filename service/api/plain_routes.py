"""The prediction endpoints on a short path through the framework, built from public APIs only.

A request to a FastAPI route passes the router's scan of every route, FastAPI's per-request exit stack, and the
route's dependency solving and response preparation. For a one-instance predict that costs as much as the
prediction itself, and the prediction endpoints use none of it: they take the request, read the body themselves
and answer a ``Response``.

So :class:`PredictionLane` is the innermost of the app's middleware: the app's own middleware (metrics, API keys,
the body guard) and FastAPI's outer layers (its 500 handler, its telemetry) have run when it sees a request; if a
prediction route matches it (path and method), the lane answers it with that route, a plain Starlette ``Route``
whose endpoint answers an exception with the app's own exception handlers, so errors look as they do everywhere;
any other request goes on to FastAPI's router. The FastAPI declarations of these endpoints stay, for
``/openapi.json`` and ``/docs``, and for a request with another method (405).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute, APIRouter
from opentelemetry import trace
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[..., Any]
# The app's exception handlers, as FastAPI keeps them: an exception class or a status code → (request, exc) → response.
Handlers = Mapping[Any, Callable[[Request, Exception], Any]]


class PlainEndpoint:
    """The ASGI app of a plain route: a FastAPI route's endpoint, which takes the request and the path parameters
    and returns a ``Response``, with the app's exception handlers around it (an exception none of them takes goes on
    to the 500 handler outside, as from any other route)."""

    def __init__(self, endpoint: Endpoint, handlers: Handlers) -> None:
        self.endpoint = endpoint
        self.handlers = handlers  # the app's own mapping: handlers added later count too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response: Response = await self.endpoint(request=request, **scope["path_params"])
        except Exception as exc:
            handler = self.handler_for(exc)
            if handler is None:
                raise
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)

    def handler_for(self, exc: Exception) -> Callable[[Request, Exception], Any] | None:
        """The handler the app would pick: by status for an HTTP error, else the nearest class of the exception; but
        not the 500 handler nor the catch-all for ``Exception``, which belong to the outermost layer."""
        if isinstance(exc, HTTPException) and exc.status_code in self.handlers and exc.status_code != 500:
            return self.handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in self.handlers:
                return self.handlers[cls]
        return None


def plain_route(route: APIRoute, handlers: Handlers) -> Route:
    """A Starlette route answering as ``route`` does, without FastAPI's per-route machinery."""
    endpoint = PlainEndpoint(route.endpoint, handlers)
    return Route(route.path, endpoint, methods=sorted(route.methods or ()), name=route.name, include_in_schema=False)


class PredictionLane:
    """Answers the requests one of ``routes`` matches; hands every other request to ``app``."""

    def __init__(self, app: ASGIApp, routes: list[Route], tracing: bool = False) -> None:
        self.app = app
        self.routes = routes
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    scope["route"] = route  # the metrics label requests by its template, as FastAPI's routes do
                    if self.tracing:
                        _name_span(scope["method"], route.path_format)
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _name_span(method: str, template: str) -> None:
    """Name the request's span by its route, as FastAPI does for its own routes."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("http.route", template)
        span.update_name(f"{method} {template}")


def plain_routes(routers: Iterable[APIRouter], endpoints: Iterable[Endpoint], handlers: Handlers) -> list[Route]:
    """The plain routes of every route of ``routers`` whose endpoint is one of ``endpoints``."""
    wanted = set(endpoints)
    routes = [
        plain_route(route, handlers)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in wanted
    ]
    if len(routes) != len(wanted):
        raise ValueError("every endpoint to serve plainly must be a route of the routers given")
    return routes
