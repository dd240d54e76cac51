"""The prediction endpoints are answered by the prediction lane in front of the app's middleware: the same paths,
documented the same way, with the same keys, body limits, metrics and errors as every other route."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from service.api.app import TrainServeApp, create_app
from service.api.body_buffers import BodyBuffers
from service.api.exchange import Answer, Exchange
from service.api.middleware import BodyLimits, InflightBudget
from service.api.observability import HttpMetrics
from service.api.prediction_lane import LaneRoute, PredictionLane, lane_routes
from service.api.routers import predict, tfserving, v2
from service.serving.engine import Engine
from service.serving.errors import InvalidInputError
from service.settings import Settings

PREDICTION_PATHS = [
    "/predict",
    "/v1/models/{name}:predict",
    "/v1/models/{name}/versions/{version}:predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
]


def lane_of(app: TrainServeApp) -> PredictionLane:
    """The app's prediction lane, as the app builds it."""
    lane = app.build_middleware_stack()
    assert isinstance(lane, PredictionLane)
    return lane


def scope_of(
    path: str, method: str = "POST", root_path: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": root_path,
        "query_string": b"",
        "headers": headers or [],
    }


def test_prediction_paths_are_answered_by_the_lane_and_still_documented(settings: Settings) -> None:
    app = create_app(settings)
    lane = lane_of(app)
    for template in PREDICTION_PATHS:
        path = template.replace("{name}", "digits").replace("{version}", "2")
        found = lane.route_for(scope_of(path))
        assert found is not None, f"{path} goes through FastAPI's router"
        route, params = found
        assert route.template == template
        assert params == {key: value for key, value in (("name", "digits"), ("version", "2")) if key in template}
    operations = app.openapi()["paths"]
    for template in PREDICTION_PATHS:
        assert "requestBody" in operations[template]["post"], template
    assert lane.route_for(scope_of("/train")) is None, "the other routes stay FastAPI's"
    assert lane.route_for(scope_of("/predict", "GET")) is None, "another method: FastAPI's router answers (405)"
    assert lane.route_for(scope_of("/v1/models/a/b:predict")) is None, "a name has no '/'"
    assert lane.route_for(scope_of("/v1/models/m/versions/x:predict")) is None, "a version is digits"
    behind_a_proxy = lane.route_for(scope_of("/api/v2/models/m/infer", root_path="/api"))
    assert behind_a_proxy is not None
    assert behind_a_proxy[1] == {"name": "m"}


def test_the_lane_is_in_front_of_every_other_middleware(settings: Settings) -> None:
    """In front of the app's own middleware and of FastAPI's outer layers (its 500 handler among them): the lane
    applies the same keys, limits and metrics itself, and answers its own failures."""
    for keyed, expected in ((True, ["MetricsMiddleware", "ApiKeyMiddleware", "BodyGuard"]), (False, None)):
        app = create_app(settings.model_copy(update={"api_keys": "secret" if keyed else ""}))
        order = [getattr(m.cls, "__name__", "") for m in app.user_middleware]  # outermost first
        assert order == (expected or ["MetricsMiddleware", "BodyGuard"])
        lane = lane_of(app)
        assert type(lane.app).__name__ == "ServerErrorMiddleware", "the rest of the app is FastAPI's whole stack"
        assert (lane.keys is not None) == keyed


def test_the_lane_answers_errors_as_every_route_does(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        bad = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422
        assert bad.json()["error"]["errors"][0]["message"].startswith("the body is not valid JSON")

        missing = client.post("/predict", json={"model": "no such model", "instances": [[0.0]]})
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == "no model named 'no such model'"
        assert missing.headers["content-type"] == "application/json"

        tf_serving = client.post("/v1/models/nothing/versions/3:predict", json={"instances": [[0.0]]})
        assert tf_serving.status_code == 404
        assert tf_serving.json() == {"error": "Servable not found for request: Specific(nothing, 3)"}

        v2_missing = client.post("/v2/models/nothing/infer", json={"inputs": []})
        assert v2_missing.status_code == 404
        assert "nothing" in v2_missing.json()["error"]

        empty = client.post("/predict")
        assert empty.status_code == 422
        assert empty.json()["error"]["errors"][0]["path"] == "body"

        wrong_method = client.get("/predict")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["type"] == "method_not_allowed"
        assert wrong_method.headers["allow"] == "POST"


def test_the_lane_keeps_the_keys_the_limits_and_the_metrics(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys": "k-full, k-view:read", "max_request_bytes": 10_000})
    view = {"Authorization": "Bearer k-view"}
    with TestClient(create_app(keyed)) as client:
        no_key = client.post("/predict", json={"model": "m", "instances": [[0.0]]})
        assert no_key.status_code == 401
        assert no_key.json()["error"]["type"] == "unauthorized"
        assert no_key.headers["www-authenticate"] == 'Bearer realm="trainserve"'
        wrong = client.post("/v2/models/m/infer", json={}, headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()) == (401, {"error": "the API key is not valid"})
        # a read-only key predicts: past the key check, there is no such model
        assert client.post("/predict", json={"model": "m", "instances": [[0.0]]}, headers=view).status_code == 404

        too_large = client.post("/v1/models/m:predict", content=b"[" * 20_000, headers=view)
        assert too_large.status_code == 413
        assert "TRAINSERVE_MAX_REQUEST_BYTES" in too_large.json()["error"]
        chunked = client.post("/predict", content=iter([b"{" * 6_000, b"{" * 6_000]), headers=view)
        assert chunked.status_code == 413, "a body without a length is counted as it arrives"

        metrics = client.get("/metrics", headers=view).text
    for route, status in (("/predict", 401), ("/predict", 404), ("/predict", 413), ("/v1/models/{name}:predict", 413)):
        line = f'trainserve_http_requests_total{{method="POST",route="{route}",status="{status}"}}'
        assert line in metrics, line
    assert 'trainserve_http_request_duration_seconds_count{method="POST",route="/predict"} 3.0' in metrics


def test_the_endpoints_fastapi_declares_answer_as_the_lane_does(settings: Settings) -> None:
    """The routers' own endpoints (what /docs documents) call the same handlers, so an app without the lane
    answers the same."""
    plain = FastAPI()
    plain.state.engine = Engine(settings)
    plain.state.bodies = BodyBuffers()
    from service.api import errors

    errors.install(plain)
    for router in (predict.router, tfserving.router, v2.router):
        plain.include_router(router)
    requests = [
        ("/predict", b'{"model": "nothing", "instances": [[0.0]]}'),
        ("/predict", b"{not json"),
        ("/v1/models/nothing/versions/3:predict", b'{"instances": [[0.0]]}'),
        ("/v2/models/nothing/infer", b'{"inputs": []}'),
    ]
    with TestClient(create_app(settings)) as laned, TestClient(plain) as unlaned:
        for path, body in requests:
            ours, theirs = laned.post(path, content=body), unlaned.post(path, content=body)
            assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), path


def test_only_endpoints_of_the_app_can_be_given_a_handler() -> None:
    async def elsewhere() -> None: ...

    with pytest.raises(ValueError, match="must be a route of the app"):
        lane_routes(predict.router.routes, {predict.predict: predict.answer, elsewhere: predict.answer})
    assert [route.path for route in lane_routes(predict.router.routes, {predict.predict: predict.answer})] == [
        "/predict"
    ]


class Recorder:
    """An ASGI server's side of one request: the body in pieces, then what the app sent."""

    def __init__(self, pieces: list[Message]) -> None:
        self.pieces = pieces
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.pieces:
            return self.pieces.pop(0)
        await asyncio.sleep(3600)  # the client waits for its answer
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def bare_lane(handler: LaneRoute, budget: InflightBudget, settings: Settings) -> tuple[PredictionLane, HttpMetrics]:
    async def behind(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the lane answers these")

    metrics = HttpMetrics()
    lane = PredictionLane(
        behind,
        routes=[handler],
        engine=Engine(settings),
        bodies=BodyBuffers(),
        limits=BodyLimits(max_bytes=1000, budget=budget, timeout=5),
        keys=None,
        metrics=metrics,
    )
    return lane, metrics


def test_an_unexpected_failure_is_logged_once_and_answered_with_a_generic_500(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(exchange: Exchange) -> Answer:
        if exchange.body.data == b"invalid":
            raise InvalidInputError("not a good body", ("body",))
        raise RuntimeError("a bug")

    budget = InflightBudget(10_000)
    lane, metrics = bare_lane(LaneRoute("/v1/models/{name}:predict", broken), budget, settings)
    for body, status in ((b"invalid", 400), (b"anything", 500)):
        recorder = Recorder([{"type": "http.request", "body": body, "more_body": False}])
        headers = [(b"content-length", str(len(body)).encode())]
        asyncio.run(lane(scope_of("/v1/models/m:predict", headers=headers), recorder.receive, recorder.send))
        assert recorder.sent[0]["status"] == status
    assert recorder.sent[1]["body"] == b'{"error":"internal server error"}'
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "unexpected error on POST /v1/models/m:predict"
    ]
    assert budget.used == 0
    text = "\n".join(str(m) for m in metrics.collect())
    assert "'status': '500'" in text
    assert "'status': '400'" in text


def test_a_client_that_leaves_mid_body_is_not_answered_and_holds_nothing(settings: Settings) -> None:
    async def echo(exchange: Exchange) -> Answer:
        return Answer(bytes(exchange.body.data), "application/octet-stream")

    budget = InflightBudget(10_000)
    lane, metrics = bare_lane(LaneRoute("/predict", echo), budget, settings)
    recorder = Recorder([{"type": "http.request", "body": b"12", "more_body": True}, {"type": "http.disconnect"}])
    asyncio.run(lane(scope_of("/predict", headers=[(b"content-length", b"900")]), recorder.receive, recorder.send))
    assert recorder.sent == []
    assert budget.used == 0
    assert next(iter(metrics.collect())).samples == [], "nothing was answered, so nothing is counted"

    pieces: list[Message] = [{"type": "http.request", "body": b"ab", "more_body": True}]
    pieces.append({"type": "http.request", "body": b"cd", "more_body": False})
    recorder = Recorder(pieces)
    asyncio.run(
        lane(scope_of("/predict", headers=[(b"transfer-encoding", b"chunked")]), recorder.receive, recorder.send)
    )
    assert recorder.sent[0]["status"] == 200
    assert dict(recorder.sent[0]["headers"])[b"content-length"] == b"4"
    assert recorder.sent[1]["body"] == b"abcd"
    assert budget.used == 0
