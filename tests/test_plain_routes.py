"""The prediction endpoints are answered by plain Starlette routes placed ahead of their FastAPI declarations:
the same paths, documented the same way, with the same errors and middleware."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Match

from service.api.app import create_app
from service.api.plain_routes import PlainRoute, serve_plainly
from service.settings import Settings

PREDICTION_PATHS = [
    "/predict",
    "/v1/models/{name}:predict",
    "/v1/models/{name}/versions/{version}:predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
]


def answering_route(app: FastAPI, path: str, method: str = "POST") -> object:
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    for route in app.router.routes:
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
        assert route.path == template
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
        serve_plainly(FastAPI(), [router], [here, elsewhere])
