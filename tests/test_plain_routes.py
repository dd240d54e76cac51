"""The prediction endpoints are answered in a lean lane that ends in plain routes rather than FastAPI's router:
the same paths, documented the same way, with the same errors and middleware."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Match

from service.api.app import create_app
from service.api.plain_routes import PlainRoute, TrainServeAPI, serve_plainly
from service.settings import Settings

PREDICTION_PATHS = [
    "/predict",
    "/v1/models/{name}:predict",
    "/v1/models/{name}/versions/{version}:predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
]


def answering_route(app: FastAPI, path: str, method: str = "POST") -> object:
    """The route that answers a request: a plain one if it matches, else the router's, as the app dispatches."""
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    plain = app.plain_routes if isinstance(app, TrainServeAPI) else []
    for route in [*plain, *app.router.routes]:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
    raise AssertionError(f"no route answers {method} {path}")


def test_prediction_paths_are_answered_plainly_and_still_documented(settings: Settings) -> None:
    app = create_app(settings)
    for template in PREDICTION_PATHS:
        path = template.replace("{name}", "digits").replace("{version}", "2")
        route = answering_route(app, path)
        assert type(route) is PlainRoute, f"{path} goes through {type(route).__name__}"
        assert route.path_format == template
    operations = app.openapi()["paths"]
    for template in PREDICTION_PATHS:
        assert "requestBody" in operations[template]["post"], template
    assert type(answering_route(app, "/train")) is not PlainRoute, "the other routes stay FastAPI's"


def test_plain_routes_answer_errors_as_documented(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        bad = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422
        assert bad.json()["error"]["errors"][0]["message"].startswith("the body is not valid JSON")

        missing = client.post("/predict", json={"model": "no such model", "instances": [[0.0]]})
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == "no model named 'no such model'"

        tf_serving = client.post("/v1/models/nothing/versions/3:predict", json={"instances": [[0.0]]})
        assert tf_serving.status_code == 404
        assert tf_serving.json() == {"error": "Servable not found for request: Specific(nothing, 3)"}

        v2 = client.post("/v2/models/nothing/infer", json={"inputs": []})
        assert v2.status_code == 404
        assert "nothing" in v2.json()["error"]

        wrong_method = client.get("/predict")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["type"] == "method_not_allowed"


def test_only_endpoints_of_the_routers_given_can_be_served_plainly() -> None:
    router = APIRouter()

    @router.post("/here")
    async def here() -> None: ...

    async def elsewhere() -> None: ...

    with pytest.raises(ValueError, match="must be a route of the routers given"):
        serve_plainly(TrainServeAPI(), [router], [here, elsewhere])


def test_the_lean_lane_has_the_apps_middleware_and_error_handlers() -> None:
    """A plain route's request passes the app's middleware; its exceptions reach the app's handlers, and one
    that no handler takes gets the app's 500 answer."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.types import ASGIApp, Receive, Scope, Send

    seen: list[str] = []

    class Recording:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append(f"{scope['method']} {scope['path']}")
            await self.app(scope, receive, send)

    class RefusedError(Exception):
        pass

    router = APIRouter()

    @router.post("/items/{name}")
    async def plain(request: Request, name: str) -> Response:
        body = await request.body()
        if name == "refused":
            raise RefusedError(name)
        if name == "broken":
            raise RuntimeError("broken")
        return JSONResponse({"name": name, "body": body.decode(), "route": request.scope["route"].path})

    app = TrainServeAPI()
    app.include_router(router)
    app.add_middleware(Recording)

    @app.exception_handler(RefusedError)
    async def refused(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"refused": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"unexpected": type(exc).__name__}, status_code=500)

    serve_plainly(app, [router], [plain])
    assert type(answering_route(app, "/items/x")) is PlainRoute
    with TestClient(app, raise_server_exceptions=False) as client:
        ok = client.post("/items/x", content=b"hello")
        assert ok.json() == {"name": "x", "body": "hello", "route": "/items/{name}"}
        assert client.post("/items/refused").status_code == 409
        assert client.post("/items/refused").json() == {"refused": "refused"}
        broken = client.post("/items/broken")
        assert (broken.status_code, broken.json()) == (500, {"unexpected": "RuntimeError"})
        assert client.get("/items/x").status_code == 405  # another method: FastAPI's lane
    assert seen == ["POST /items/x", "POST /items/refused", "POST /items/refused", "POST /items/broken", "GET /items/x"]


def layers(app: object, stop: type | None = None) -> list[str]:
    """The classes of an ASGI stack from the outside in, following each layer's ``app``."""
    names = []
    while hasattr(app, "app") and not (stop is not None and isinstance(app, stop)):
        names.append(type(app).__name__)
        app = app.app
    return names


def test_both_lanes_begin_with_the_same_layers(settings: Settings) -> None:
    """The lean lane repeats FastAPI's outer layers and the app's middleware; if a FastAPI release changes its
    stack, this fails rather than leave the prediction endpoints without a layer the others have."""
    from starlette.middleware.exceptions import ExceptionMiddleware

    from service.api.plain_routes import _Lanes

    app = create_app(settings.model_copy(update={"api_keys": "secret"}))
    lanes = app.build_middleware_stack()
    assert isinstance(lanes, _Lanes)
    full = layers(lanes.full, stop=ExceptionMiddleware)
    assert full[0] == "ServerErrorMiddleware"
    assert {"MetricsMiddleware", "ApiKeyMiddleware", "BodyGuard"} <= set(full)
    assert layers(lanes.lean) == full
