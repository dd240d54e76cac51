"""GET /metrics in Prometheus' text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.observability import Metrics

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Requests and latency by route; jobs by status, epoch durations and the queue (from the database and the
    broker); predict batch sizes per model and the model cache."""
    collected: Metrics = request.app.state.metrics
    local = collected.local_text()  # on the event loop, which is what updates these
    shared = await run_in_threadpool(collected.shared_text)
    return Response(local + shared, media_type=CONTENT_TYPE_LATEST)
