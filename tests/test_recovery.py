"""Nothing lost, nothing run twice: workers killed with SIGKILL, Redis restarted with and without its data,
20 jobs at once on two workers. Real processes, real signals, a real Redis server."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from fastapi.testclient import TestClient

from service.embedded import free_port, start_redis, start_worker, stop_process
from service.settings import Settings
from service.store import EXPORT_SUFFIXES, model_key
from tests.conftest import chapter_request, settings_env, wait_for_job, wait_for_log
from worker.reconciler import reconcile

pytestmark = pytest.mark.slow


class Cluster:
    """A Redis server, two workers and the API, all on their own data directory and queue."""

    def __init__(self, root: Path, keras_cache: Path) -> None:
        self.root = root
        self.redis_dir = root / "redis"
        self.port = free_port()
        self.redis = start_redis(self.redis_dir, self.port)
        self.settings = Settings(
            home=root / "home",
            redis_url=f"redis://127.0.0.1:{self.port}/0",
            keras_cache=keras_cache,
            queue="recovery",
            lease_seconds=6,
            reconcile_interval=0.5,
            max_attempts=2,
        )
        self.workers: dict[str, Any] = {}
        self.logs: dict[str, Path] = {}

    def start_worker(self, name: str) -> None:
        log = self.root / f"{name}-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            process = start_worker(settings_env(self.settings), out)
        self.workers[name] = process
        self.logs[name] = log
        wait_for_log(log, " ready.", process)

    def stop_worker(self, name: str) -> None:
        stop_process(self.workers.pop(name))

    def stop_workers(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)

    def start_workers(self) -> None:
        for name in ("a", "b"):
            if name not in self.workers:
                self.start_worker(name)

    def restart_redis(self, *, keep_data: bool) -> None:
        stop_process(self.redis)
        if not keep_data:
            shutil.rmtree(self.redis_dir)
        self.redis = start_redis(self.redis_dir, self.port)

    def queue_length(self) -> int:
        client = redis.Redis(port=self.port)
        try:
            return int(client.llen(self.settings.queue))
        finally:
            client.close()

    def close(self) -> None:
        self.stop_workers()
        stop_process(self.redis)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, keras_cache: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), keras_cache)
    try:
        cluster.start_workers()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[TestClient]:
    from service.api.app import create_app

    with TestClient(create_app(cluster.settings)) as client:
        yield client


def long_job(epochs: int = 12) -> dict[str, Any]:
    """A digits job of several seconds: small batches, many epochs."""
    body = chapter_request(epochs=epochs)
    body["fit"]["batch_size"] = 8
    return body


def wait_until_training(api: TestClient, job_id: str, min_epoch: int = 2, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["epoch"] >= min_epoch:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not reach epoch {min_epoch}")


def pid_of(job: dict[str, Any]) -> int:
    return int(job["worker"].rpartition(":")[2])


def models_of(api: TestClient, job_id: str) -> list[dict[str, Any]]:
    data = api.get("/models", params={"limit": 500}).json()["data"]
    return [m for m in data if m["job_id"] == job_id]


def test_pool_child_killed_mid_epoch_job_resumes_and_succeeds_once(api: TestClient, cluster: Cluster) -> None:
    job_id = api.post("/train", json=long_job()).json()["job_id"]
    running = wait_until_training(api, job_id)
    victim = pid_of(running)
    os.kill(victim, signal.SIGKILL)

    job = wait_for_job(api, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    assert pid_of(job) != victim
    # Two epochs were recorded before the kill, so the first was checkpointed: the retry goes on after it.
    assert job["resumed_from_epoch"] >= 1
    assert [row["epoch"] for row in job["history"]] == list(range(1, 13)), "each epoch once"
    assert len(models_of(api, job_id)) == 1
    store = Path(cluster.settings.model_store)
    models = api.get("/models").json()["data"]
    published = {f"{m['model_id']}.keras" for m in models} | {f"{m['model_id']}.tflite" for m in models if m["litert"]}
    published |= {
        model_key(m["model_id"], EXPORT_SUFFIXES[export])
        for m in models
        for export, record in (m["exports"] or {}).items()
        if record and record.get("sha256")
    }
    # The checkpoints go with the job: its worker removes the last one, the reconciler what the killed one left.
    # Besides the models' files, the store keeps only the jobs' TensorBoard logs.
    deadline = time.monotonic() + 10
    while (files := {p.name for p in store.iterdir()} - {"tensorboard"}) != published:
        assert time.monotonic() < deadline, files - published
        time.sleep(0.1)


def test_job_fails_with_a_reason_once_its_workers_died_too_often(api: TestClient) -> None:
    job_id = api.post("/train", json=long_job()).json()["job_id"]
    first = wait_until_training(api, job_id)
    os.kill(pid_of(first), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (second := api.get(f"/jobs/{job_id}").json())["attempts"] < 2 or second["progress"]["epoch"] < 1:
        assert time.monotonic() < deadline, second
        assert second["status"] in ("queued", "running"), second
        time.sleep(0.05)
    os.kill(pid_of(second), signal.SIGKILL)

    job = wait_for_job(api, job_id)
    assert job["status"] == "failed", (first["worker"], second["worker"], {k: job[k] for k in ("attempts", "worker")})
    assert job["error"]["type"] == "WorkerLost"
    assert job["error"]["message"] == ("the worker died while training this job, 2 time(s) out of 2 allowed attempt(s)")
    assert job["model_id"] is None
    assert models_of(api, job_id) == []


def test_whole_worker_killed_job_is_taken_over_after_its_lease(api: TestClient, cluster: Cluster) -> None:
    """A worker and its pool die at once (a host lost): no one requeues the message, the lease runs out, and the
    other worker's reconciler sends the job again."""
    job_id = api.post("/train", json=long_job()).json()["job_id"]
    running = wait_until_training(api, job_id)
    owner = next(name for name, p in cluster.workers.items() if pid_of(running) in child_pids(p.pid))
    os.killpg(cluster.workers[owner].pid, signal.SIGKILL)
    cluster.workers.pop(owner).wait()

    job = wait_for_job(api, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    assert len(models_of(api, job_id)) == 1
    survivor = next(iter(cluster.workers.values()))
    assert pid_of(job) in child_pids(survivor.pid)
    cluster.start_worker(owner)  # for the tests that follow


def child_pids(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children(recursive=True)}


def assert_each_trained_once(api: TestClient, job_ids: list[str]) -> None:
    for job_id in job_ids:
        job = wait_for_job(api, job_id)
        assert job["status"] == "succeeded"
        assert job["attempts"] == 1


def test_redis_restart_keeps_queued_jobs_and_nothing_is_sent_twice(api: TestClient, cluster: Cluster) -> None:
    cluster.stop_workers()
    job_ids = [api.post("/train", json=chapter_request(epochs=1)).json()["job_id"] for _ in range(2)]
    assert cluster.queue_length() == 2

    cluster.restart_redis(keep_data=True)
    assert cluster.queue_length() == 2, "the append-only file kept the queued messages"
    time.sleep(cluster.settings.lease_seconds + 0.5)  # past the reconciler's grace period
    report = reconcile(cluster.settings, api.app.state.queue)  # type: ignore[attr-defined]
    assert report.redispatched == []
    assert cluster.queue_length() == 2, "messages still in Redis are not sent again"

    cluster.start_workers()
    assert_each_trained_once(api, job_ids)


def test_redis_restarted_empty_lost_messages_are_sent_again(api: TestClient, cluster: Cluster) -> None:
    cluster.stop_workers()
    job_ids = [api.post("/train", json=chapter_request(epochs=1)).json()["job_id"] for _ in range(2)]
    cluster.restart_redis(keep_data=False)
    assert cluster.queue_length() == 0, "Redis came back without the queued messages"

    time.sleep(cluster.settings.lease_seconds + 0.5)
    report = reconcile(cluster.settings, api.app.state.queue)  # type: ignore[attr-defined]
    assert sorted(report.redispatched) == sorted(job_ids)
    assert cluster.queue_length() == 2
    again = reconcile(cluster.settings, api.app.state.queue)  # type: ignore[attr-defined]
    assert again.redispatched == [], "a second round finds the messages and sends nothing"

    cluster.start_workers()
    assert_each_trained_once(api, job_ids)


def test_twenty_jobs_at_once_on_two_workers_all_succeed(api: TestClient, cluster: Cluster) -> None:
    def submit(i: int) -> str:
        body = chapter_request(epochs=1)
        body["name"] = f"concurrent {i}"
        response = api.post("/train", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    with ThreadPoolExecutor(max_workers=20) as pool:
        job_ids = list(pool.map(submit, range(20)))
    assert len(set(job_ids)) == 20
    jobs = [wait_for_job(api, job_id) for job_id in job_ids]
    assert all(job["status"] == "succeeded" for job in jobs), [job["error"] for job in jobs]
    assert all(job["attempts"] == 1 for job in jobs)
    assert len({job["model_id"] for job in jobs}) == 20
    pools = [child_pids(p.pid) for p in cluster.workers.values()]
    used = {i for job in jobs for i, pids in enumerate(pools) if pid_of(job) in pids}
    assert used == {0, 1}, "both workers took jobs"
