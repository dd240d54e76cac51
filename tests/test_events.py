"""GET /jobs/{id}/events, read by a real HTTP client from the API served by uvicorn."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import chapter_request

pytestmark = pytest.mark.slow


def read_events(response: httpx.Response) -> list[dict[str, Any]]:
    """Parse a text/event-stream until it ends: [{"id", "event", "data"}] plus {"comment"} entries."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if current:
                events.append(current)
            current = {}
        elif line.startswith(":"):
            events.append({"comment": line[1:].strip()})
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            current[field] = json.loads(value) if field == "data" else value
    return events


def test_events_follow_a_job_to_its_end_and_resume(live_url: str) -> None:
    with httpx.Client(base_url=live_url, timeout=60) as http:
        job_id = http.post("/train", json=chapter_request(epochs=4)).json()["job_id"]
        with http.stream("GET", f"/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [e for e in read_events(response) if "event" in e]

        statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
        assert statuses[-1] == "succeeded"
        assert statuses == list(dict.fromkeys(statuses)), "one event per change"
        epochs = [e for e in events if e["event"] == "epoch"]
        assert [e["data"]["epoch"] for e in epochs] == [1, 2, 3, 4]
        assert [e["id"] for e in epochs] == ["1.1", "1.2", "1.3", "1.4"]
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(epochs[0]["data"])
        assert events[-1]["data"]["model_id"] == http.get(f"/jobs/{job_id}").json()["model_id"]

        # A client that saw up to epoch 2 reconnects: the current status, then epochs 3 and 4 only.
        with http.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": "1.2"}) as response:
            resumed = [e for e in read_events(response) if "event" in e]
        assert [(e["event"], e["id"]) for e in resumed] == [("epoch", "1.3"), ("epoch", "1.4"), ("status", "1.4")]

        assert http.get("/jobs/0123456789abcdef0123456789abcdef/events").status_code == 404


def test_idle_stream_sends_heartbeats_and_ends_when_the_job_is_cancelled(settings: Settings) -> None:
    from service.api.app import create_app

    idle = settings.model_copy(update={"queue": "nobody-reads-this", "sse_heartbeat": 0.3})
    with TestClient(create_app(idle)) as client:
        job_id = client.post("/train", json=chapter_request()).json()["job_id"]
        started = time.monotonic()
        with client.stream("GET", f"/jobs/{job_id}/events") as response:
            lines = response.iter_lines()
            seen: list[str] = []
            for line in lines:
                seen.append(line)
                if line == ": keep-alive":
                    break
            assert any(line.startswith("data:") and '"queued"' in line for line in seen)
            assert time.monotonic() - started < 10
            assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
            rest = list(lines)  # the stream ends on its own once the job has ended
        assert any(line.startswith("data:") and '"cancelled"' in line for line in rest)
