"""The prediction endpoints are answered in a lean lane that ends in plain routes rather than FastAPI's router:
the same paths, documented the same way, with the same errors and middleware."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Match, Route

from service.api.app import create_app
from service.api.plain_routes import PredictionLane, plain_routes
from service.api.routers import predict, tfserving, v2
from service.settings import Settings

PREDICTION_PATHS = [
    "/predict",
    "/v1/models/{name}:predict",
    "/v1/models/{name}/versions/{version}:predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
]


def lane_of(app: FastAPI) -> list[Route]:
    """The routes the app's prediction lane answers."""
    lanes = [m for m in app.user_middleware if getattr(m.cls, "__name__", "") == PredictionLane.__name__]
    assert len(lanes) == 1
    routes = lanes[0].kwargs["routes"]
    assert isinstance(routes, list)
    return routes


def answering(routes: list[Route], path: str, method: str = "POST") -> Route | None:
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    return next((route for route in routes if route.matches(scope)[0] is Match.FULL), None)


def test_prediction_paths_are_answered_plainly_and_still_documented(settings: Settings) -> None:
    app = create_app(settings)
    routes = lane_of(app)
    for template in PREDICTION_PATHS:
        path = template.replace("{name}", "digits").replace("{version}", "2")
        route = answering(routes, path)
        assert route is not None, f"{path} goes through FastAPI's router"
        assert route.path_format == template
    operations = app.openapi()["paths"]
    for template in PREDICTION_PATHS:
        assert "requestBody" in operations[template]["post"], template
    assert answering(routes, "/train") is None, "the other routes stay FastAPI's"
    assert answering(routes, "/predict", "GET") is None, "another method: FastAPI's router answers (405)"


def test_the_lane_is_inside_every_middleware_of_the_app(settings: Settings) -> None:
    """Innermost of the app's middleware: a prediction request has passed metrics, API keys and the body guard."""
    app = create_app(settings.model_copy(update={"api_keys": "secret"}))
    order = [getattr(m.cls, "__name__", "") for m in app.user_middleware]  # outermost first
    assert order == ["MetricsMiddleware", "ApiKeyMiddleware", "BodyGuard", "PredictionLane"]


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
        plain_routes([router], [here, elsewhere], {})
    assert len(plain_routes([predict.router, tfserving.router, v2.router], [predict.predict], {})) == 1


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

    app = FastAPI()
    app.include_router(router)
    app.add_middleware(PredictionLane, routes=plain_routes([router], [plain], app.exception_handlers))
    app.add_middleware(Recording)

    @app.exception_handler(RefusedError)
    async def refused(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"refused": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"unexpected": type(exc).__name__}, status_code=500)

    assert answering(lane_of(app), "/items/x") is not None
    with TestClient(app, raise_server_exceptions=False) as client:
        ok = client.post("/items/x", content=b"hello")
        assert ok.json() == {"name": "x", "body": "hello", "route": "/items/{name}"}
        assert client.post("/items/refused").status_code == 409
        assert client.post("/items/refused").json() == {"refused": "refused"}
        broken = client.post("/items/broken")
        assert (broken.status_code, broken.json()) == (500, {"unexpected": "RuntimeError"})
        assert client.get("/items/x").status_code == 405  # another method: FastAPI's lane
    assert seen == ["POST /items/x", "POST /items/refused", "POST /items/refused", "POST /items/broken", "GET /items/x"]
