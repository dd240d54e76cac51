"""The FastAPI application."""

from __future__ import annotations

import gc
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi

from service.api import errors
from service.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, parse_api_keys
from service.api.observability import Metrics, MetricsMiddleware
from service.api.plain_routes import TrainServeAPI, serve_plainly
from service.api.predictor import Serving
from service.api.routers import (
    dashboard,
    datasets,
    examples,
    health,
    job_events,
    jobs,
    metrics,
    models,
    predict,
    tfserving,
    train,
    v2,
)
from service.db import get_engine
from service.settings import Settings, get_settings
from worker.celery_app import make_celery

log = logging.getLogger(__name__)

DESCRIPTION = """
Train Keras models from a JSON spec and serve them.

1. `POST /train` a Sequential model, its optimizer, loss and metrics, a dataset and fit options → a job id.
2. `GET /jobs/{job_id}` shows its status, progress and one history row per finished epoch.
3. `POST /predict` with the finished job's `model_id`; `GET /models/{model_id}/summary` is `model.summary()`.

Every error has the same shape: `{"error": {"type", "message", "errors": [{"path", "loc", "message"}]}}`.
"""


def create_app(settings: Settings | None = None) -> TrainServeAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        get_engine(settings.database_url)  # creates the tables on first use
        # Load Keras now (a few seconds) rather than in the first request's dry build.
        await run_in_threadpool(importlib.import_module, "service.keras_build")
        _settle_heap()
        settings.store_dir.mkdir(parents=True, exist_ok=True)
        if not settings.redis_url:
            log.warning("TRAINSERVE_REDIS_URL is not set: jobs cannot be queued")
        yield

    app = TrainServeAPI(
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
    app.state.celery = make_celery(settings)
    app.state.serving = Serving(settings)
    errors.install(app)
    # Outermost last: the key is checked before the body is read.
    app.state.metrics = Metrics(settings, app.state.serving)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    keys = parse_api_keys(settings.api_keys)
    if keys:  # an open service skips the layer altogether
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics.http)  # outermost: refusals count too
    if keys:
        _document_bearer_auth(app)
    for module in (predict, tfserving, v2, train, jobs, job_events, models, datasets, examples, health, metrics):
        app.include_router(module.router)
    app.include_router(dashboard.router)  # `/` and the dashboard's files
    # The prediction endpoints, the many small requests, are answered by plain routes ahead of all the others.
    serve_plainly(
        app,
        [predict.router, tfserving.router, v2.router],
        [predict.predict, tfserving.predict, tfserving.predict_version, v2.infer, v2.infer_version],
    )
    return app


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


def _document_bearer_auth(app: FastAPI) -> None:
    """Show the API-key requirement in /docs (with an Authorize button)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
