"""Cancellation, limits, hostile input, idempotency and API keys."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import chapter_request, running_worker, settings_env, train, wait_for_job


def long_job(epochs: int = 200) -> dict[str, Any]:
    body = chapter_request(epochs=epochs)
    body["fit"]["batch_size"] = 8
    return body


def models_count(client: TestClient) -> int:
    count: int = client.get("/models").json()["count"]
    return count


@pytest.mark.slow
def test_cancel_queued_and_running_jobs(client: TestClient) -> None:
    models_before = models_count(client)
    running_id = client.post("/train", json=long_job()).json()["job_id"]
    queued_id = client.post("/train", json=chapter_request(epochs=1)).json()["job_id"]
    deadline = time.monotonic() + 60
    while client.get(f"/jobs/{running_id}").json()["progress"]["epoch"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    # queued: cancelled at once, and its message, when it comes, starts nothing
    response = client.post(f"/jobs/{queued_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"

    # running: stops at its next batch, publishes no model
    response = client.post(f"/jobs/{running_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running"
    assert response.json()["cancel_requested"] is True
    job = wait_for_job(client, running_id, timeout=30)
    assert job["status"] == "cancelled"
    assert job["model_id"] is None
    assert 1 <= len(job["history"]) < 200

    # idempotent, and both stay cancelled
    assert client.post(f"/jobs/{running_id}/cancel").status_code == 200
    marker = train(client, chapter_request(epochs=1))  # runs after the cancelled job's message
    assert client.get(f"/jobs/{queued_id}").json()["status"] == "cancelled"
    assert client.get(f"/jobs/{queued_id}").json()["attempts"] == 0
    assert models_count(client) == models_before + 1

    # a finished job cannot be cancelled
    response = client.post(f"/jobs/{marker['job_id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["message"].endswith("has already succeeded; there is nothing to cancel")
    assert client.post("/jobs/0123456789abcdef0123456789abcdef/cancel").status_code == 404


@pytest.fixture(scope="module")
def limited(settings: Settings) -> Iterator[TestClient]:
    """The API with small limits (queue shared with the session worker)."""
    from service.api.app import create_app

    small = settings.model_copy(
        update={"max_request_bytes": 20_000, "max_model_params": 5_000, "max_epochs": 10, "max_layers": 4}
    )
    with TestClient(create_app(small)) as client:
        yield client


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_limit_on_request_body(limited: TestClient) -> None:
    body = chapter_request()
    body["name"] = "x" * 30_000
    error = error_of(limited.post("/train", json=body), 413)
    assert error["type"] == "payload_too_large"
    assert "larger than 20,000 bytes" in error["message"]
    assert "TRAINSERVE_MAX_REQUEST_BYTES" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while the body streams in
        yield b'{"model_id": "0123456789abcdef0123456789abcdef", "instances": ['
        for _ in range(3000):
            yield b"[1, 2, 3, 4, 5, 6, 7, 8],"
        yield b"[1]]}"

    response = limited.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert error_of(response, 413)["type"] == "payload_too_large"


def test_limit_on_model_parameters(limited: TestClient) -> None:
    error = error_of(limited.post("/train", json=chapter_request()), 422)  # 7,510 parameters
    assert error["errors"][0]["path"] == "model"
    assert error["message"] == (
        "the model has 7,510 parameters, more than this service allows: at most 5,000 (TRAINSERVE_MAX_MODEL_PARAMS)"
    )


def test_limit_on_epochs_and_layers(limited: TestClient) -> None:
    body = chapter_request(epochs=11)
    body["model"]["layers"][1:1] = [{"type": "dropout", "rate": 0.1}] * 2
    error = error_of(limited.post("/train", json=body), 422)
    problems = {e["path"]: e["message"] for e in error["errors"]}
    assert problems == {
        "fit.epochs": "11 epochs is more than this service allows: at most 10 (TRAINSERVE_MAX_EPOCHS)",
        "model.layers": "5 layers is more than this service allows: at most 4 (TRAINSERVE_MAX_LAYERS)",
    }


@pytest.mark.slow
def test_limit_on_training_time(settings: Settings, tmp_path: Path) -> None:
    """A worker whose jobs may train for 2 s: a longer job fails with reason `timeout`."""
    from service.api.app import create_app

    short = settings.model_copy(update={"job_time_limit": 2.0, "queue": "short-jobs"})
    with running_worker(short, tmp_path / "worker.log"), TestClient(create_app(short)) as client:
        job = train(client, long_job(epochs=1000))
    assert job["status"] == "failed"
    assert job["error"] == {
        "type": "timeout",
        "message": "the job ran past its time limit of 2 s (TRAINSERVE_JOB_TIME_LIMIT)",
    }
    assert job["model_id"] is None
    assert len(job["history"]) < 1000


def test_hostile_input(client: TestClient) -> None:
    # path traversal and malformed ids
    for path in ("/models/..%2F..%2Fetc%2Fpasswd/download", "/jobs/%2e%2e", "/models/0123/summary"):
        assert client.get(path).status_code in (404, 422), path
    # unknown fields anywhere
    body = chapter_request()
    body["model"]["layers"][0]["from_config"] = {"class_name": "Lambda"}
    error = error_of(client.post("/train", json=body), 422)
    assert error["errors"][0] == {
        "path": "model.layers[0].from_config",
        "loc": ["model", "layers", 0, "from_config"],
        "message": "unknown field 'from_config'",
    }
    # layers outside the allow-list
    body = chapter_request()
    body["model"]["layers"][0] = {"type": "lambda", "function": "os.system('true')"}
    error = error_of(client.post("/train", json=body), 422)
    assert error["errors"][0]["message"].startswith("unknown layer type 'lambda'")
    # deeply nested JSON
    deep = '{"model_id": "0123456789abcdef0123456789abcdef", "instances": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/predict", content=deep, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    # not JSON at all, wrong types
    assert client.post("/train", content=b"\xff\xfe", headers={"content-type": "application/json"}).status_code == 422
    assert error_of(client.post("/train", json=[1, 2]), 422)["type"] == "validation_error"


def test_idempotency_key_returns_the_first_job(client: TestClient) -> None:
    key = f"retry-{time.monotonic_ns()}"
    first = client.post("/train", json=chapter_request(epochs=1), headers={"Idempotency-Key": key})
    assert first.status_code == 202
    again = client.post("/train", json=chapter_request(epochs=1), headers={"Idempotency-Key": key})
    assert again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["build"]["total_params"] == 7510
    assert again.json()["build"] is None
    assert again.headers["location"] == first.headers["location"]
    other = client.post("/train", json=chapter_request(epochs=2), headers={"Idempotency-Key": key})
    error = error_of(other, 409)
    assert error["type"] == "idempotency_key_reused"
    wait_for_job(client, first.json()["job_id"])
    jobs = client.get("/jobs", params={"limit": 500}).json()["data"]
    assert sum(1 for job in jobs if job["job_id"] == first.json()["job_id"]) == 1


@pytest.fixture(scope="module")
def guarded(settings: Settings) -> Iterator[TestClient]:
    from service.api.app import create_app

    keyed = settings.model_copy(update={"api_keys": "s3cret-full, s3cret-view:read"})
    with TestClient(create_app(keyed)) as client:
        yield client


def test_api_keys(guarded: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    full = {"Authorization": "Bearer s3cret-full"}
    view = {"Authorization": "Bearer s3cret-view"}
    # health and docs stay open
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert guarded.get(path).status_code == 200, path
    assert guarded.get("/openapi.json").json()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # no key, a malformed header, an unknown key: 401 with a challenge
    for headers in ({}, {"Authorization": "s3cret-full"}, {"Authorization": "Bearer wrong"}):
        response = guarded.get("/jobs", headers=headers)
        assert error_of(response, 401)["type"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    # a known key
    assert guarded.get("/jobs", headers=full).status_code == 200
    assert guarded.get("/jobs", headers=view).status_code == 200
    # a read-only key may not train or cancel: 403
    response = guarded.post("/train", json=chapter_request(), headers=view)
    assert error_of(response, 403)["type"] == "forbidden"
    assert guarded.post("/jobs/0123456789abcdef0123456789abcdef/cancel", headers=view).status_code == 403
    # ... but may predict (404: no such model, past the key check)
    response = guarded.post(
        "/predict", json={"model_id": "0123456789abcdef0123456789abcdef", "instances": [[1]]}, headers=view
    )
    assert response.status_code == 404
    assert "s3cret" not in caplog.text
    assert all("s3cret" not in r.getMessage() for r in caplog.records)
    # Read-only is decided by the route, method included, not by how a path ends.
    for method, path in (
        ("DELETE", "/datasets/x:predict"),
        ("DELETE", "/datasets/infer"),
        ("POST", "/jobs/0123456789abcdef0123456789abcdef:predict"),
    ):
        assert guarded.request(method, path, headers=view).status_code == 403, (method, path)
    # TF Serving's and v2's refusals are in their own format.
    response = guarded.post("/v1/models/m:predict", json={"instances": [1]})
    assert response.status_code == 401
    assert response.json() == {"error": "this endpoint needs an API key: Authorization: Bearer <key>"}


def test_an_unknown_key_scope_stops_the_service_from_starting(settings: Settings) -> None:
    """A typo in a scope must not make a key meant to be read-only a full-access one."""
    import subprocess
    import sys

    env = settings_env(settings) | {"TRAINSERVE_API_KEYS": "first, s3cr3t:rw"}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "api", "--port", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "TRAINSERVE_API_KEYS" in result.stderr
    assert "API key 2 has the unknown scope 'rw'" in result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr


def test_made_up_methods_share_one_metrics_series(client: TestClient) -> None:
    for i in range(20):
        client.request(f"BREW{i}", "/jobs")
    metrics = client.get("/metrics").text
    assert "BREW" not in metrics
    assert 'method="other",route="/jobs"' in metrics


def test_keys_are_not_logged_by_the_server(settings: Settings, tmp_path: Path) -> None:
    """uvicorn's access log, run for real, does not carry the Authorization header."""
    import sys

    import httpx

    from bench.processes import serving
    from service.embedded import free_port

    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "service.cli", "api", "--port", url.rpartition(":")[2]]
    env = settings_env(settings) | {"TRAINSERVE_API_KEYS": "s3cret-full", "TRAINSERVE_LOG_LEVEL": "DEBUG"}
    log = tmp_path / "api.log"
    with serving(command, env, log, f"{url}/healthz"):
        assert httpx.get(f"{url}/jobs", headers={"Authorization": "Bearer s3cret-full"}).is_success
        assert httpx.get(f"{url}/jobs", headers={"Authorization": "Bearer s3cret-bad"}).status_code == 401
    text = log.read_text()
    assert "GET /jobs" in text
    assert "s3cret" not in text


def test_a_list_of_jobs_carries_a_bounded_answer(settings: Settings, tmp_path: Path) -> None:
    """Long histories make a page of jobs large: past TRAINSERVE_MAX_RESPONSE_BYTES it is a 422 naming the limit
    that fits; `history=last` (what a list shows) answers each job's last epoch."""
    from service import jobs
    from service.api.app import create_app
    from service.db import EpochRow, session_scope
    from service.spec import TrainRequest

    small = Settings(home=tmp_path, redis_url=settings.redis_url, max_response_bytes=1024 * 1024)
    with TestClient(create_app(small)) as client:
        with session_scope(small.database_url) as session:
            for _ in range(2):
                job = jobs.create_job(session=session, request=TrainRequest.model_validate(chapter_request()))
                session.add_all(
                    EpochRow(job_id=job.id, epoch=e, metrics={"loss": 1 / e, "accuracy": 0.5}) for e in range(1, 1001)
                )
        error = error_of(client.get("/jobs"), 422)
        assert error["errors"][0]["path"] == "query.limit"
        assert "TRAINSERVE_MAX_RESPONSE_BYTES" in error["message"]
        assert "limit=1" in error["message"]
        assert client.get("/jobs", params={"limit": 1}).status_code == 200
        last = client.get("/jobs", params={"history": "last"}).json()["data"]
        assert [job["history"] for job in last] == [[{"epoch": 1000, "loss": 0.001, "accuracy": 0.5}]] * 2


def test_body_deadlines_cancel_only_the_request_that_stalled() -> None:
    """The one watcher behind TRAINSERVE_BODY_TIMEOUT: a request waiting past the timeout for its body gets a 408
    where it waits; one whose body keeps coming, and one cancelled for another reason, are left as they are."""
    import asyncio

    from starlette.exceptions import HTTPException
    from starlette.types import Message

    from service.api.middleware import BodyDeadlines

    async def scenario() -> tuple[object, object, object]:
        deadlines = BodyDeadlines(timeout=0.4)
        never = asyncio.Event()

        async def stalled() -> Message:
            await never.wait()
            return {"type": "http.request", "body": b""}

        async def trickle() -> Message:
            await asyncio.sleep(0.2)
            return {"type": "http.request", "body": b"x", "more_body": True}

        async def slow_client() -> object:
            return await deadlines.receive(stalled)

        async def steady_client() -> object:
            for _ in range(6):  # 1.2 s in all, never 0.4 s without a piece
                await deadlines.receive(trickle)
            return "read"

        async def cancelled_elsewhere() -> object:
            return await deadlines.receive(stalled)

        other = asyncio.create_task(cancelled_elsewhere())
        asyncio.get_running_loop().call_later(0.1, other.cancel)
        gathered = asyncio.gather(slow_client(), steady_client(), other, return_exceptions=True)
        results = await asyncio.wait_for(gathered, 5)  # a watcher that never fires fails here, not by hanging
        assert not deadlines.waiting
        assert not deadlines.stalled
        return results[0], results[1], results[2]

    slow, steady, other = asyncio.run(scenario())
    assert isinstance(slow, HTTPException)
    assert slow.status_code == 408
    assert "TRAINSERVE_BODY_TIMEOUT" in str(slow.detail)
    assert steady == "read"
    assert isinstance(other, asyncio.CancelledError)
