"""The prediction endpoints on a short path through the framework.

For each request a FastAPI route solves its dependencies, opens an exit stack and prepares response-model
validation. For a one-instance predict that costs as much as the prediction itself, and the prediction
endpoints use none of it: they take the request, read the body themselves and answer a ``Response``.

So each of them is also served by a plain Starlette route with the same path, placed ahead of its FastAPI
declaration, which stays for ``/openapi.json`` and ``/docs``. The middleware, the error handlers and the route
template in the metrics are the same for both; only the per-request dependency machinery is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

Endpoint = Callable[..., Any]


class PlainRoute(Route):
    """A Starlette route that leaves itself in the scope, as FastAPI's do: the metrics label requests by it."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def plain_route(route: APIRoute) -> Route:
    """A Starlette route calling ``route``'s endpoint with the request and the path's parameters (strings)."""
    endpoint = route.endpoint

    async def call(request: Request) -> Response:
        response: Response = await endpoint(request=request, **request.path_params)
        return response

    return PlainRoute(route.path, call, methods=sorted(route.methods or ()), name=route.name, include_in_schema=False)


def serve_plainly(app: FastAPI, routers: Iterable[APIRouter], endpoints: Iterable[Endpoint]) -> None:
    """Put a plain route in front of every route of ``routers`` whose endpoint is one of ``endpoints``."""
    wanted = set(endpoints)
    plain = [
        plain_route(route)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in wanted
    ]
    if len(plain) != len(wanted):
        raise ValueError("every endpoint to serve plainly must be a route of the routers given")
    app.router.routes[:0] = plain
