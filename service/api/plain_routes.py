"""The prediction endpoints on a short path through the framework, built from public APIs only.

A request to a FastAPI route passes the router's scan of every route, FastAPI's per-request exit stack, and the
route's dependency solving and response preparation. For a one-instance predict that costs as much as the
prediction itself, and the prediction endpoints use none of it: they take the request, read the body themselves
and answer a ``Response``.

So :class:`PredictionLane` is the innermost of the app's middleware: the app's own middleware (metrics, API keys,
the body guard) and FastAPI's outer layers (its 500 handler, its telemetry) have run when it sees a request; if a
prediction route matches it (path and method), the lane answers it with that route, a plain Starlette ``Route``,
under Starlette's ``ExceptionMiddleware`` holding the app's exception handlers, so errors look as they do
everywhere; any other request goes on to FastAPI's router. The FastAPI declarations of these endpoints stay, for
``/openapi.json`` and ``/docs``, and for a request with another method (405).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute, APIRouter
from opentelemetry import trace
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[..., Any]


def plain_route(route: APIRoute) -> Route:
    """A Starlette route for a FastAPI route's endpoint, which takes the request and the path parameters."""
    endpoint: Endpoint = route.endpoint

    async def answer(request: Request) -> Response:
        response: Response = await endpoint(request=request, **request.path_params)
        return response

    return Route(route.path, answer, methods=sorted(route.methods or ()), name=route.name, include_in_schema=False)


class PredictionLane:
    """Answers the requests one of ``routes`` matches; hands every other request to ``app``."""

    def __init__(self, app: ASGIApp, routes: list[Route], handlers: Mapping[Any, Callable[..., Any]]) -> None:
        self.app = app
        self.routes = routes
        # The app's handlers for the errors a route may raise; an unexpected exception goes on to the 500 handler
        # outside, as from any other route.
        caught = {key: handler for key, handler in handlers.items() if key not in (500, Exception)}
        self.lane = ExceptionMiddleware(self._dispatch, handlers=caught)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    scope["route"] = route  # the metrics label requests by its template, as FastAPI's routes do
                    _name_span(scope["method"], route.path_format)
                    await self.lane(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        route: Route = scope["route"]
        await route.handle(scope, receive, send)


def _name_span(method: str, template: str) -> None:
    """Name the request's span by its route, as FastAPI does for its own routes (when tracing is on)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("http.route", template)
        span.update_name(f"{method} {template}")


def plain_routes(routers: Iterable[APIRouter], endpoints: Iterable[Endpoint]) -> list[Route]:
    """The plain routes of every route of ``routers`` whose endpoint is one of ``endpoints``."""
    wanted = set(endpoints)
    routes = [
        plain_route(route)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in wanted
    ]
    if len(routes) != len(wanted):
        raise ValueError("every endpoint to serve plainly must be a route of the routers given")
    return routes
