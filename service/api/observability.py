"""Prometheus metrics: HTTP requests by route, jobs by status, the queue, epoch durations, predict batches.

Two registries: what this process counts in memory (requests, batches, the model cache), read on the event loop
that updates it; and what the database and the broker know (jobs, epochs, queue), read in a thread at scrape time,
so every API replica reports the same job figures.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import EPOCH_BUCKET_LABELS, EpochDurationRow, JobRow, JobStatus, session_scope
from service.jobs import queued_by_pool
from service.queue import JobQueue
from service.serving.batching import Histogram as BatchHistogram
from service.serving.engine import Engine
from service.settings import Settings

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics(Collector):
    """Requests answered, by method, route template and status, and the time each took. Counted in plain numbers
    by the event loop's thread, the only one that counts or reads them: a labelled Prometheus metric takes a lock
    on every update, which cost more than the rest of counting a request."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        # Per (method, route): requests by latency bucket (the last: slower than every bound), and their sum.
        self._latencies: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:
            method = "other"  # a client's made-up methods must not make a new series each
        key = (method, route, str(status))
        self._counts[key] = self._counts.get(key, 0) + 1
        latency = self._latencies.get((method, route))
        if latency is None:
            latency = self._latencies[method, route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "trainserve_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            labels=["method", "route", "status"],
        )
        for labels, count in sorted(self._counts.items()):
            requests.add_metric(list(labels), count)
        yield requests
        latency = HistogramMetricFamily(
            "trainserve_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            labels=["method", "route"],
        )
        bounds = [f"{bound:g}" for bound in LATENCY_BUCKETS] + ["+Inf"]
        for route, counts in sorted(self._latencies.items()):
            cumulative = list(itertools.accumulate(counts[:-1]))
            latency.add_metric(list(route), list(zip(bounds, cumulative, strict=True)), counts[-1])
        yield latency


class MetricsMiddleware:
    """Counts and times every request under its route template (`/jobs/{job_id}`), never the raw path."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # The template as documented (`path_format`: convertors left out), never the raw path.
            route = getattr(scope.get("route"), "path_format", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)


class ServingCollector(Collector):
    """Predict batches per model (requests and instances merged into one call) and the model cache."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        labels = ["model_id", "name", "version"]
        requests = HistogramMetricFamily(
            "trainserve_batch_requests", "Predict requests merged into one model call.", labels=labels
        )
        instances = HistogramMetricFamily(
            "trainserve_batch_instances", "Instances computed in one model call.", labels=labels
        )
        for stats in list(self.engine.stats.models.values()):
            values = [stats.model_id, stats.name, str(stats.version)]
            requests.add_metric(values, _buckets(stats.requests), stats.requests.total)
            instances.add_metric(values, _buckets(stats.instances), stats.instances.total)
        yield requests
        yield instances
        cache = self.engine.cache
        calls = CounterMetricFamily(
            "trainserve_model_calls",
            "Calls of the loaded models, by the runtime that answered: `litert` (the LiteRT interpreter on the "
            "model's flatbuffer), `xla` (compiled for the padded batch size) or `graph` (TensorFlow's graph).",
            labels=[*labels, "call"],
        )
        runtimes = GaugeMetricFamily(
            "trainserve_model_runtime",
            "The runtime each padded batch size of a loaded model was given (1), once it has been timed.",
            labels=[*labels, "batch_size", "runtime"],
        )
        litert = GaugeMetricFamily(
            "trainserve_model_litert",
            "Whether a loaded model's LiteRT flatbuffer passed its checks (1) or serves nothing (0; the log says why).",
            labels=labels,
        )
        for loaded in cache.loaded:
            info = loaded.info
            values = [info.model_id, info.name, str(info.version)]
            for kind, count in sorted(loaded.call.calls.items()):
                calls.add_metric([*values, kind], count)
            for size, kind in sorted(loaded.call.choices.items()):
                runtimes.add_metric([*values, str(size), kind], 1)
            litert.add_metric(values, 0 if loaded.call.litert is None else 1)
        yield calls
        yield runtimes
        yield litert
        integrity = CounterMetricFamily(
            "trainserve_store_integrity_failures",
            "Stored files refused because their sha256 is not the one recorded: `keras` (the model is not served) "
            "or `litert` (the model is served without its flatbuffer).",
            labels=["file"],
        )
        for file in ("keras", "litert"):
            integrity.add_metric([file], cache.integrity_failures[file])
        yield integrity
        yield GaugeMetricFamily("trainserve_models_loaded", "Models loaded for prediction.", len(cache.loaded))
        yield GaugeMetricFamily(
            "trainserve_models_loaded_bytes",
            "Bytes of weights of the loaded models, their flatbuffers included.",
            cache.nbytes,
        )
        yield _counter("trainserve_model_loads", "Models loaded from the store.", cache.loads)
        yield _counter("trainserve_model_evictions", "Models unloaded to stay within bounds.", cache.evictions)


def _buckets(histogram: BatchHistogram) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(bound) else f"{bound:g}", count) for bound, count in histogram.cumulative()]


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


class JobsCollector(Collector):
    """What the database and the broker know: jobs by status, epoch durations, the queue. Each is read in a time
    that does not grow with the history: a count per status, a dozen histogram rows, two lengths in Redis."""

    def __init__(self, settings: Settings, queue: JobQueue) -> None:
        self.settings = settings
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.settings.database_url) as session:
            counts = dict(session.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all())
            durations = {row.le: row for row in session.scalars(select(EpochDurationRow))}
            queued = queued_by_pool(session=session)
        jobs = GaugeMetricFamily("trainserve_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        epochs = HistogramMetricFamily(
            "trainserve_epoch_duration_seconds", "Time one training epoch took, validation included."
        )
        buckets, running, seconds = [], 0, 0.0
        for label in EPOCH_BUCKET_LABELS:
            row = durations.get(label)
            if row is not None:
                running += row.epochs
                seconds += row.seconds
            buckets.append((label, float(running)))
        epochs.add_metric([], buckets, seconds)
        yield epochs
        yield from self._queue(queued)

    def _queue(self, queued: dict[str, int]) -> Iterator[Metric]:
        if not self.settings.redis_url:
            return
        try:
            pools = self.queue.pools() | set(queued)
            waiting, held = self.queue.depth(pools)
            workers = self.queue.pool_workers(pools)
        except redis.RedisError:
            return  # the broker being down shows in /readyz; the scrape still answers
        yield GaugeMetricFamily("trainserve_queue_waiting", "Training messages waiting in the queues.", waiting)
        yield GaugeMetricFamily(
            "trainserve_queue_held", "Messages workers have taken and not yet acknowledged (jobs being run).", held
        )
        live = GaugeMetricFamily(
            "trainserve_pool_workers", "Workers taking each pool's jobs (announced in the last 20 s).", labels=["pool"]
        )
        stuck = GaugeMetricFamily(
            "trainserve_jobs_unschedulable",
            "Queued jobs of a pool no worker takes: they wait until a worker of that pool starts.",
            labels=["pool"],
        )
        for pool in sorted(pools):
            live.add_metric([pool], workers[pool])
            stuck.add_metric([pool], queued.get(pool, 0) if workers[pool] == 0 else 0)
        yield live
        yield stuck


class Metrics:
    def __init__(self, settings: Settings, engine: Engine, queue: JobQueue) -> None:
        self.local = CollectorRegistry()
        self.http = HttpMetrics()
        self.local.register(self.http)
        self.local.register(ServingCollector(engine))
        self.shared = CollectorRegistry()
        self.shared.register(JobsCollector(settings, queue))

    def local_text(self) -> bytes:
        return generate_latest(self.local)

    def shared_text(self) -> bytes:
        return generate_latest(self.shared)
