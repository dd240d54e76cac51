"""The prediction endpoints' own lane: one pure ASGI app in front of the app's middleware, built from public
framework pieces only.

A one-instance prediction is some tens of microseconds of work: parse, check, one call of a small model, encode.
Through the app's middleware (metrics, API keys, the body guard, each wrapping ``send`` or ``receive``), the
router's scan of every route and Starlette's request and response objects it cost several times that. So
:class:`PredictionLane` is the outermost of the app's middleware; a ``POST`` to a prediction path is answered here,
end to end, by the same policies in one pass:

- the API keys (``ApiKeys``: a prediction is a read) and the body limits (``BodyLimits``: size, the budget of bytes
  in flight, the time a body may stall) — the very objects the rest of the app's middleware uses;
- the protocol's handler (``Exchange`` → ``Answer``), its answer sent with headers built from a kept table;
- its failures in the protocol of its path, as the app's exception handlers write them; an unexpected one is
  logged once and answered with a generic 500;
- the request counted and timed under its route template, as the metrics middleware does for every other route.

Any other request (another path, or another method on these paths: a 405 with ``Allow``) goes on to the app.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from starlette.convertors import Convertor
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.body_buffers import BodyBuffers
from service.api.errors import error_response, http_error_response, serving_error_response
from service.api.exchange import Answer, Handler, receive_exchange
from service.api.middleware import ApiKeys, BodyLimits, framing, send_response
from service.api.observability import HttpMetrics
from service.serving.engine import Engine
from service.serving.errors import ServingError

log = logging.getLogger(__name__)

METHOD = "POST"


@dataclass
class LaneRoute:
    """A prediction path (``/v1/models/{name:servable}:predict``) and the handler that answers it; ``template`` is
    the path as /docs and /metrics write it, convertors left out."""

    path: str
    handler: Handler
    template: str = field(init=False)

    def __post_init__(self) -> None:
        self.template = compile_path(self.path)[1]


class _Matcher:
    """Paths to routes: a dict for the paths without parameters, the compiled patterns for the others, each tried
    only on paths that start as its template does."""

    def __init__(self, routes: Iterable[LaneRoute]) -> None:
        self.exact: dict[str, LaneRoute] = {}
        self.patterns: list[tuple[str, re.Pattern[str], dict[str, Convertor[Any]], LaneRoute]] = []
        for route in routes:
            regex, _, convertors = compile_path(route.path)
            if convertors:
                prefix = route.path.partition("{")[0]
                self.patterns.append((prefix, regex, convertors, route))
            else:
                self.exact[route.path] = route

    def match(self, path: str) -> tuple[LaneRoute, dict[str, str]] | None:
        route = self.exact.get(path)
        if route is not None:
            return route, {}
        for prefix, regex, convertors, candidate in self.patterns:
            if path.startswith(prefix):
                found = regex.match(path)
                if found is not None:
                    params = {key: convertors[key].convert(value) for key, value in found.groupdict().items()}
                    return candidate, params
        return None


class PredictionLane:
    """Answers ``POST`` on ``routes``; hands every other request to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Iterable[LaneRoute],
        engine: Engine,
        bodies: BodyBuffers,
        limits: BodyLimits,
        keys: ApiKeys | None,
        metrics: HttpMetrics,
        tracing: bool = False,
    ) -> None:
        self.app = app
        self.routes = list(routes)
        self._matcher = _Matcher(self.routes)
        self.engine = engine
        self.bodies = bodies
        self.limits = limits
        self.keys = keys
        self.metrics = metrics
        self.tracing = tracing
        self._content_types: dict[str, tuple[bytes, bytes]] = {}

    def route_for(self, scope: Scope) -> tuple[LaneRoute, dict[str, str]] | None:
        """The route this lane answers a request with, and its path parameters; None: the app answers it."""
        if scope["type"] != "http" or scope["method"] != METHOD:
            return None
        return self._matcher.match(_route_path(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.route_for(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        if self.tracing:
            _name_span(METHOD, route.template)
        started = time.perf_counter()
        status = await self._serve(route, params, scope, receive, send)
        if status:
            self.metrics.observe(METHOD, route.template, status, time.perf_counter() - started)

    async def _serve(
        self, route: LaneRoute, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> int | None:
        """Answer the request; its status (None if the client left before it could be answered)."""
        path = scope["path"]
        intake = None
        exchange = None
        try:
            if self.keys is not None:
                refusal = self.keys.refusal(scope, changes=False)
                if refusal is not None:
                    raise refusal
            intake = self.limits.intake(framing(scope)[0], receive)
            exchange = await receive_exchange(scope, intake, params, self.engine, self.bodies)
            answer = await route.handler(exchange)
        except ClientDisconnect:
            return None
        except ServingError as exc:
            return await send_response(scope, send, serving_error_response(path, params, exc))
        except HTTPException as exc:
            return await send_response(scope, send, http_error_response(path, exc))
        except Exception:
            log.exception("unexpected error on %s %s", METHOD, path)
            return await send_response(
                scope, send, error_response(path, 500, "internal_error", "internal server error")
            )
        finally:
            if exchange is not None:
                exchange.release()
            if intake is not None:
                intake.close()
        await self._send_answer(answer, send)
        return 200

    async def _send_answer(self, answer: Answer, send: Send) -> None:
        content_type = self._content_types.get(answer.media_type)
        if content_type is None:
            content_type = self._content_types[answer.media_type] = (b"content-type", answer.media_type.encode())
        headers = [content_type, (b"content-length", str(len(answer.content)).encode())]
        if answer.headers:
            headers += [
                (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer.content})


def _route_path(scope: Scope) -> str:
    """The path within the app, without the root path a proxy may put in front, as Starlette's router reads it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def _name_span(method: str, template: str) -> None:
    """Name the request's span by its route, as FastAPI does for its own routes."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("http.route", template)
        span.update_name(f"{method} {template}")


def lane_routes(routes: Iterable[Any], handlers: Mapping[Any, Handler]) -> list[LaneRoute]:
    """The lane's routes: each FastAPI route (of ``routes``) whose endpoint ``handlers`` maps to a handler, at
    that route's path."""
    found = [
        LaneRoute(route.path, handlers[route.endpoint])
        for route in routes
        if getattr(route, "endpoint", None) in handlers
    ]
    if len(found) != len(handlers):
        raise ValueError("every endpoint given a handler must be a route of the app")
    return found
