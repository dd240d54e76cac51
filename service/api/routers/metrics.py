"""GET /metrics: the serving side in Prometheus' text format — batch sizes per model and the model cache."""

from __future__ import annotations

import math

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from service.api.batching import Histogram, ModelBatchStats
from service.api.deps import ServingDep

router = APIRouter(tags=["health"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _histogram(lines: list[str], metric: str, stats: ModelBatchStats, histogram: Histogram) -> None:
    labels = f'model_id="{stats.model_id}",name="{_label(stats.name)}",version="{stats.version}"'
    for bound, count in histogram.cumulative():
        le = "+Inf" if math.isinf(bound) else f"{bound:g}"
        lines.append(f'{metric}_bucket{{{labels},le="{le}"}} {count}')
    lines.append(f"{metric}_sum{{{labels}}} {histogram.total:g}")
    lines.append(f"{metric}_count{{{labels}}} {histogram.observations}")


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}}})
async def metrics(serving: ServingDep) -> PlainTextResponse:
    """How predict requests were merged into model calls (per model: requests and instances per call), and the
    model cache (models loaded, their weights' bytes, loads and evictions), for Prometheus or a curious eye."""
    cache = serving.cache
    lines = [
        "# HELP trainserve_batch_requests Predict requests merged into one model call.",
        "# TYPE trainserve_batch_requests histogram",
    ]
    models = list(serving.stats.models.values())
    for stats in models:
        _histogram(lines, "trainserve_batch_requests", stats, stats.requests)
    lines += [
        "# HELP trainserve_batch_instances Instances computed in one model call.",
        "# TYPE trainserve_batch_instances histogram",
    ]
    for stats in models:
        _histogram(lines, "trainserve_batch_instances", stats, stats.instances)
    lines += [
        "# HELP trainserve_models_loaded Models loaded in memory for prediction.",
        "# TYPE trainserve_models_loaded gauge",
        f"trainserve_models_loaded {len(cache.loaded)}",
        "# HELP trainserve_models_loaded_bytes Bytes of weights of the loaded models.",
        "# TYPE trainserve_models_loaded_bytes gauge",
        f"trainserve_models_loaded_bytes {cache.nbytes}",
        "# HELP trainserve_model_loads_total Models loaded from the store since start.",
        "# TYPE trainserve_model_loads_total counter",
        f"trainserve_model_loads_total {cache.loads}",
        "# HELP trainserve_model_evictions_total Models unloaded to stay within the cache's bounds.",
        "# TYPE trainserve_model_evictions_total counter",
        f"trainserve_model_evictions_total {cache.evictions}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type=CONTENT_TYPE)
