"""The prediction endpoints on a short path through the framework.

A request to a FastAPI route passes the router's scan of every route, FastAPI's exit stack, Starlette's
per-route exception wrapper, and the route's dependency solving and response-model preparation. For a
one-instance predict that costs as much as the prediction itself, and the prediction endpoints use none of it:
they take the request, read the body themselves and answer a ``Response``.

So :class:`TrainServeAPI` builds two middleware stacks from the same middleware: FastAPI's own, for every route,
and a lane for the prediction endpoints (:func:`serve_plainly`) that ends in a plain route instead of the router.
Both lanes have the same outer layers (the 500 handler, telemetry, the app's middleware: metrics, API keys, body
limit), and a plain route answers an exception with the app's exception handlers, as the router would. The
FastAPI declarations of these endpoints stay, for ``/openapi.json`` and ``/docs``, and for a request with another
method (405).

The lane repeats the outer layers of FastAPI's stack, which are FastAPI's internals: pyproject.toml pins FastAPI's
minor version, and tests/test_plain_routes.py checks that the two stacks still begin alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from fastapi import FastAPI
from fastapi._body_limit import AppBodyLimitMiddleware
from fastapi.routing import APIRoute, APIRouter
from fastapi.telemetry._api import _route_selected
from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[..., Any]
# The app's exception handlers, as FastAPI registers them: (request, exception) → a response, sync or async.
Handler = Callable[[Request, Exception], Any]


class PlainRoute(Route):
    """A route whose endpoint takes the request and its path parameters and returns a ``Response``.

    It leaves itself in the scope, as FastAPI's routes do: the metrics label requests by its template."""

    def __init__(self, route: APIRoute) -> None:
        super().__init__(
            route.path, route.endpoint, methods=sorted(route.methods or ()), name=route.name, include_in_schema=False
        )
        self.endpoint_function: Endpoint = route.endpoint
        self.exception_handlers: dict[Any, Handler] = {}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response: Response = await self.endpoint_function(request=request, **scope["path_params"])
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # to the 500 handler, as from any other route
            if is_async_callable(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Handler | None:
        if isinstance(exc, HTTPException) and exc.status_code in self.exception_handlers:
            return self.exception_handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None


class _Lanes:
    """Sends a request that a plain route matches (path and method) down the lean lane, any other down FastAPI's."""

    def __init__(self, full: ASGIApp, lean: ASGIApp, routes: list[PlainRoute]) -> None:
        self.full = full
        self.lean = lean
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    if scope.get("fastapi.telemetry") is not None:
                        _route_selected(scope=scope, path=route.path_format)  # names the span, as the router does
                    await self.lean(scope, receive, send)
                    return
        await self.full(scope, receive, send)


async def _to_route(scope: Scope, receive: Receive, send: Send) -> None:
    route: PlainRoute = scope["route"]
    await route.handle(scope, receive, send)


class TrainServeAPI(FastAPI):
    """FastAPI, with a lean lane for the endpoints given to :func:`serve_plainly`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plain_routes: list[PlainRoute] = []

    def build_middleware_stack(self) -> ASGIApp:
        full = super().build_middleware_stack()
        if not self.plain_routes:
            return full
        error_handler = None
        handlers: dict[Any, Handler] = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            else:
                handlers[key] = cast(Handler, value)
        for route in self.plain_routes:
            route.exception_handlers = handlers
        # The same outer layers as FastAPI's stack, then the app's middleware, then the route itself.
        middleware = [
            Middleware(ServerErrorMiddleware, handler=error_handler, debug=self.debug),
            Middleware(ExceptionTelemetryMiddleware),
            Middleware(AppBodyLimitMiddleware, max_body_size=self.max_body_size),
            *self.user_middleware,
        ]
        lean: ASGIApp = _to_route
        for cls, args, kwargs in reversed(middleware):
            lean = cls(lean, *args, **kwargs)
        return _Lanes(full, lean, self.plain_routes)


def serve_plainly(app: TrainServeAPI, routers: Iterable[APIRouter], endpoints: Iterable[Endpoint]) -> None:
    """Answer every route of ``routers`` whose endpoint is one of ``endpoints`` in the lean lane."""
    wanted = set(endpoints)
    plain = [
        PlainRoute(route)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in wanted
    ]
    if len(plain) != len(wanted):
        raise ValueError("every endpoint to serve plainly must be a route of the routers given")
    app.plain_routes.extend(plain)
