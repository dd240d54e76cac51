"""GET /metrics, read with Prometheus' own text parser."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import chapter_request, train

pytestmark = pytest.mark.slow


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_cover_requests_jobs_epochs_queue_and_batches(client: TestClient) -> None:
    before = samples(client)
    job = train(client, chapter_request(epochs=3))
    client.post("/predict", json={"model_id": job["model_id"], "instances": load_digits().images[:4].tolist()})
    client.get("/jobs/0123456789abcdef0123456789abcdef")
    after = samples(client)

    requests = "trainserve_http_requests_total"
    assert value(after, requests, method="POST", route="/train", status="202") == (
        value(before, requests, method="POST", route="/train", status="202") + 1
    )
    assert value(after, requests, method="POST", route="/predict", status="200") == (
        value(before, requests, method="POST", route="/predict", status="200") + 1
    ), "the plainly served prediction routes are counted too"
    assert value(after, requests, route="/jobs/{job_id}", status="404") >= 1, "route templates, not raw paths"
    assert value(after, "trainserve_http_request_duration_seconds_count", route="/jobs/{job_id}") >= 2
    assert not any("0123456789abcdef" in dict(labels).get("route", "") for _, labels in after)

    assert (
        value(after, "trainserve_jobs", status="succeeded") >= value(before, "trainserve_jobs", status="succeeded") + 1
    )
    epochs = "trainserve_epoch_duration_seconds_count"
    assert value(after, epochs) >= value(before, epochs) + 3
    assert value(after, "trainserve_epoch_duration_seconds_sum") > 0
    assert ("trainserve_queue_waiting", frozenset()) in after

    assert value(after, "trainserve_batch_instances_sum", model_id=job["model_id"]) == 4
    assert value(after, "trainserve_models_loaded") >= 1


def test_opentelemetry_spans_only_when_asked_for(settings: Settings) -> None:
    """TRAINSERVE_OPENTELEMETRY hands every request to FastAPI's OpenTelemetry support, which reports to the
    process's tracer provider (set here as `opentelemetry-instrument` would, with an in-memory exporter)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert exporter.get_finished_spans() == ()

    with TestClient(create_app(settings.model_copy(update={"opentelemetry": True}))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/predict", json={"model": "none", "instances": [[0.0]]}).status_code == 404
    names = [span.name for span in exporter.get_finished_spans()]
    assert "GET /healthz" in names
    assert "POST /predict" in names, names
