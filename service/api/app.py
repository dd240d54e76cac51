"""The FastAPI application."""

from __future__ import annotations

import functools
import gc
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, APIRouter
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from service.api import errors
from service.api.body_buffers import BodyBuffers
from service.api.exchange import Handler
from service.api.job_watch import JobWatch
from service.api.middleware import ApiKeyMiddleware, ApiKeys, BodyGuard, BodyLimits, InflightBudget
from service.api.multipart import FORM_OVERHEAD_BYTES
from service.api.observability import Metrics, MetricsMiddleware
from service.api.prediction_lane import PredictionLane, lane_routes
from service.api.routers import (
    dashboard,
    dataset_files,
    datasets,
    examples,
    experiments,
    health,
    job_events,
    jobs,
    metrics,
    models,
    predict,
    spec,
    tfserving,
    train,
    v2,
)
from service.db import get_engine
from service.queue import JobQueue
from service.serving.engine import Engine
from service.settings import Settings, get_settings
from service.spec import TrainRequest
from service.spec.experiment import ExperimentRequest

log = logging.getLogger(__name__)

DESCRIPTION = """
Train Keras models from a JSON spec and serve them.

1. `POST /train` a Sequential model, its optimizer, loss and metrics, a dataset and fit options → a job id.
2. `GET /jobs/{job_id}` shows its status, progress and one history row per finished epoch.
3. `POST /predict` with the finished job's `model_id`; `GET /models/{model_id}/summary` is `model.summary()`.

The same models are served by TensorFlow Serving's REST API under `/v1` and by the Open Inference Protocol (v2,
with its binary extension) under `/v2`, so their clients work unchanged.

Errors: everywhere but `/v1` and `/v2`, `{"error": {"type", "message", "errors": [{"path", "loc", "message"}]}}`,
where each item names a field of the request and what was wrong with it. `/v1` and `/v2` answer as those servers
do, `{"error": "..."}`, with 400 where this API uses 422.
"""


class TrainServeApp(FastAPI):
    """FastAPI with the prediction lane (``prediction_lane``, given the rest of the app) in front of its whole
    middleware stack, FastAPI's and Starlette's outer layers included: a prediction has no use for them, and the
    lane answers its own failures, a 500 included. FastAPI's OpenTelemetry support still wraps every request."""

    prediction_lane: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return stack if self.prediction_lane is None else self.prediction_lane(stack)


def create_app(settings: Settings | None = None) -> TrainServeApp:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        get_engine(settings.database_url)  # applies pending migrations
        # Load Keras now (a few seconds) rather than in the first request's dry build.
        await run_in_threadpool(importlib.import_module, "service.keras_build")
        _settle_heap()
        if not settings.redis_url:
            log.warning("TRAINSERVE_REDIS_URL is not set: jobs cannot be queued")
        app.state.ingests = datasets.Ingests(settings.max_concurrent_ingests)
        app.state.job_watch = JobWatch(
            settings.database_url,
            max_streams=settings.max_event_streams,
            max_per_client=settings.max_event_streams_per_client,
        )
        try:
            yield
        finally:
            app.state.ingests.close()

    app = TrainServeApp(
        title="TrainServe",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry={
            "tracing": settings.opentelemetry,
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
        },
    )
    app.state.settings = settings
    app.state.queue = JobQueue(settings)
    app.state.engine = Engine(settings)
    app.state.bodies = BodyBuffers()
    errors.install(app)
    routers = [
        module.router
        for module in (
            predict,
            tfserving,
            v2,
            train,
            spec,
            jobs,
            job_events,
            experiments,
            models,
            datasets,
            dataset_files,
            examples,
            health,
            metrics,
        )
    ]
    routers.append(dashboard.router)  # `/` and the dashboard's files
    for router in routers:
        app.include_router(router)
    # Every route, as the router sees them (FastAPI's documentation pages, then ours): for the `Allow` of a 405.
    app.state.routes = [*app.routes, *(route for router in routers for route in router.routes)]
    # The prediction endpoints and the handlers the prediction lane answers them with.
    handlers: dict[Callable[..., Any], Handler] = {
        predict.predict: predict.answer,
        tfserving.predict: tfserving.answer,
        tfserving.predict_version: tfserving.answer,
        v2.infer: v2.answer,
        v2.infer_version: v2.answer,
    }
    app.state.metrics = Metrics(settings, app.state.engine, app.state.queue)
    keys = ApiKeys(settings.keys) if settings.keys else None  # an open service skips the check altogether
    limits = BodyLimits(
        max_bytes=settings.max_request_bytes,
        budget=InflightBudget(settings.max_inflight_bytes),
        timeout=settings.body_timeout,
    )
    # Middleware, innermost first (each one added wraps the ones before): the body guard, API keys (checked before
    # the body is read), metrics (refusals count too); and in front of them all the prediction lane, which answers
    # the prediction endpoints with the same keys, limits and metrics in one pass.
    app.add_middleware(
        BodyGuard,
        limits=limits,
        uploads=routes_of(routers, [datasets.upload_dataset]),
        upload_max_bytes=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        upload_file_bytes=settings.max_upload_bytes,
    )
    if keys is not None:
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics.http)
    app.prediction_lane = functools.partial(
        PredictionLane,
        routes=lane_routes([route for router in routers for route in router.routes], handlers),
        engine=app.state.engine,
        bodies=app.state.bodies,
        limits=limits,
        keys=keys,
        metrics=app.state.metrics.http,
        tracing=settings.opentelemetry,
    )
    _openapi(app, bearer=bool(settings.keys))
    return app


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the API. Its loggers go through the service's handler (``log_config=None``); its access
    log is kept only where its lines are written (INFO, DEBUG): above, each request would still format one for
    nothing."""
    level = settings.log_level.lower()
    return {"log_level": level, "log_config": None, "access_log": level in ("debug", "info")}


def routes_of(routers: list[APIRouter], endpoints: list[Callable[..., Any]]) -> list[BaseRoute]:
    """The routes that call these endpoints."""
    wanted = set(endpoints)
    found = [
        route
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in wanted
    ]
    if len(found) != len(wanted):
        raise ValueError("every endpoint named must be a route of the app")
    return list(found)


_heap_settled = False


def _settle_heap() -> None:
    """Keep the garbage collector out of the way of serving, once per process.

    TensorFlow and Keras, once imported, are some 400,000 objects the API keeps for its whole life; under load each
    full collection walked all of them (about 0.2 s, every request in flight waiting). Frozen, collections skip
    them. And a predict request leaves a few hundred short-lived objects: the youngest generation is collected
    every 10,000 allocations rather than every 700, which under load made collections ~3% of the event loop's time.
    """
    global _heap_settled
    if not _heap_settled:
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, *gc.get_threshold()[1:])
        _heap_settled = True


def _openapi(app: FastAPI, *, bearer: bool) -> None:
    """The OpenAPI document: FastAPI's, with the models of the bodies routes read themselves (POST /train's
    TrainRequest, POST /experiments' ExperimentRequest) among its components, and the API-key requirement (with an
    Authorize button in /docs)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (TrainRequest, ExperimentRequest):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in body.pop("$defs", {}).items():
                    components.setdefault(name, definition)
                components[model.__name__] = body
            if bearer:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
