"""Pools of workers: a job asks for one (`resources`), goes to that pool's queue, says so while no worker takes it
(in its record and in /metrics), and trains on a worker of that pool once one starts. Real Redis, real workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.queue import JobQueue, queue_name
from service.settings import Settings
from service.spec import TrainRequest
from tests.conftest import chapter_request, running_worker, settings_env, wait_for_job
from tests.test_metrics import samples, value
from worker.reconciler import reconcile


def _with_resources(resources: dict[str, Any], epochs: int = 2) -> dict[str, Any]:
    body = chapter_request(epochs=epochs)
    body["resources"] = resources
    return body


def test_a_request_names_its_pool_or_accelerator() -> None:
    assert TrainRequest.model_validate(chapter_request()).resources.pool_name == "default"
    assert TrainRequest.model_validate(_with_resources({"pool": "night"})).resources.pool_name == "night"
    assert TrainRequest.model_validate(_with_resources({"accelerator": "gpu"})).resources.pool_name == "gpu"
    named = TrainRequest.model_validate(_with_resources({"accelerator": "gpu", "pool": "a100"}))
    assert named.resources.pool_name == "a100"
    assert TrainRequest.model_validate(_with_resources({"accelerator": "cpu"})).resources.pool_name == "default"


def test_a_bad_pool_is_refused_with_its_path(client: TestClient) -> None:
    for resources, path in (
        ({"pool": "GPU pool!"}, "resources.pool"),
        ({"accelerator": "tpu"}, "resources.accelerator"),
        ({"pools": ["a"]}, "resources.pools"),
    ):
        response = client.post("/train", json=_with_resources(resources))
        assert response.status_code == 422, response.text
        assert [e["path"] for e in response.json()["error"]["errors"]] == [path]


def test_a_worker_names_valid_pools() -> None:
    assert Settings(worker_pools="night, gpu,night").pools == ["night", "gpu"]
    with pytest.raises(ValidationError, match="is not a pool name"):
        Settings(worker_pools="night,Big Pool")
    with pytest.raises(ValidationError, match="at least one pool"):
        Settings(worker_pools=" , ")


@pytest.mark.slow
def test_a_job_waits_for_its_pool_says_why_and_trains_there(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    pool = f"night{time.monotonic_ns() % 100000}"
    response = client.post("/train", json=_with_resources({"pool": pool}))
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    # The session's worker takes the default pool only: the job stays queued, and says why.
    time.sleep(1.5)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "queued"
    assert job["pool"] == pool
    assert job["unschedulable"] == (
        f"no worker takes the jobs of pool '{pool}' now: the job waits until one starts "
        f"(`trainserve worker --pool {pool}`)"
    )
    listed = next(row for row in client.get("/jobs?status=queued").json()["data"] if row["job_id"] == job_id)
    assert listed["unschedulable"] == job["unschedulable"]
    found = samples(client)
    assert value(found, "trainserve_jobs_unschedulable", pool=pool) == 1
    assert value(found, "trainserve_pool_workers", pool=pool) == 0
    assert value(found, "trainserve_pool_workers", pool="default") >= 1
    assert value(found, "trainserve_queue_waiting") >= 1, "its message waits in its pool's queue"

    with running_worker(settings, tmp_path / "night.log", TRAINSERVE_WORKER_POOLS=pool) as night:
        job = wait_for_job(client, job_id)
        assert job["status"] == "succeeded", job["error"]
        assert job["unschedulable"] is None
        # Trained by a pool process of the worker that takes the pool, not by the session's worker.
        trainer = int(job["worker"].rpartition(":")[2])
        assert trainer in {child.pid for child in psutil.Process(night.process.pid).children(recursive=True)}
        found = samples(client)
        assert value(found, "trainserve_pool_workers", pool=pool) == 1
        assert value(found, "trainserve_jobs_unschedulable", pool=pool) == 0
        ready = _worker_ready(settings, pool)
        assert ready.returncode == 0, ready.stdout
        assert ready.stdout.startswith("ready: trainserve-")

        # A default-pool job is not this worker's to take.
        other = wait_for_job(client, client.post("/train", json=chapter_request(epochs=1)).json()["job_id"])
        assert other["status"] == "succeeded"
        assert other["pool"] == "default"
        assert int(other["worker"].rpartition(":")[2]) not in {
            child.pid for child in psutil.Process(night.process.pid).children(recursive=True)
        }
    # Stopped, the worker withdraws at once: a job of its pool is unschedulable again, and its health check fails.
    assert _worker_ready(settings, pool).returncode == 1
    waiting = client.post("/train", json=_with_resources({"pool": pool})).json()["job_id"]
    assert client.get(f"/jobs/{waiting}").json()["unschedulable"] is not None
    assert client.post(f"/jobs/{waiting}/cancel").status_code == 200


def _worker_ready(settings: Settings, pool: str) -> subprocess.CompletedProcess[str]:
    """`trainserve worker-ready`, the container health check, for a worker of this pool on this host."""
    env = settings_env(settings) | {"TRAINSERVE_WORKER_POOLS": pool}
    command = [sys.executable, "-m", "service.cli", "worker-ready"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_a_lost_message_is_sent_again_to_its_pools_queue(client: TestClient, settings: Settings) -> None:
    """Redis lost the message (and its marker): the reconciler sends it again, to the same pool's queue."""
    pool = f"lost{time.monotonic_ns() % 100000}"
    job_id = client.post("/train", json=_with_resources({"pool": pool})).json()["job_id"]
    broker = redis.Redis.from_url(settings.redis_url)
    name = queue_name(settings, pool)
    try:
        assert broker.llen(name) == 1
        broker.delete(name, f"trainserve:sent:{job_id}")
        quick = settings.model_copy(update={"lease_seconds": 0.0})
        report = reconcile(quick, JobQueue(quick))
        assert job_id in report.redispatched
        assert broker.llen(name) == 1
        assert broker.llen(settings.queue) == 0, "not to the default pool's queue"
    finally:
        broker.close()
        client.post(f"/jobs/{job_id}/cancel")
