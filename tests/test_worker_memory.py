"""A worker's memory does not grow with the jobs it runs, and the backstop that recycles a pool process does so
between jobs, never losing or repeating one.

The growth was TensorFlow's: each traced training step registered a custom gradient in a process-wide registry
that is never emptied, and kept the step's graph alive (about 4 MiB a job). The worker's training step applies the
gradients where nothing is registered (worker/training.py: train_step); its numbers must be Keras' own.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import FINISHED, chapter_request, running_worker

MIB = 1024 * 1024


def _fit(
    layers: Callable[[], list[Any]], x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], *, ours: bool
) -> dict[str, Any]:
    import keras

    from worker.training import train_step

    keras.backend.clear_session()
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input(x.shape[1:]), *layers()])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if ours:
        model.train_step = types.MethodType(train_step, model)
    history: dict[str, Any] = model.fit(x, y, epochs=3, batch_size=48, validation_split=0.25, verbose=0).history
    return history


def test_the_training_step_gives_keras_own_numbers() -> None:
    """Same data, same seed: every loss and metric of every epoch equal, bit for bit (dropout and batch
    normalisation included; 300 samples in batches of 48 leave a short last batch, which the loss weighs)."""
    import keras

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + (x[:, 3] > 1)

    def layers() -> list[Any]:
        return [
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]

    assert _fit(layers, x, y, ours=True) == _fit(layers, x, y, ours=False)


def test_the_training_step_registers_nothing_per_job() -> None:
    """Keras' own step leaves TensorFlow's gradient registry one entry longer per traced step; ours does not."""
    import keras
    import tensorflow as tf

    x = np.zeros((64, 4), np.float32)
    y = np.arange(64) % 2

    def layers() -> list[Any]:
        return [keras.layers.Dense(2, activation="softmax")]

    # TensorFlow's registry has no public view; what it keeps alive does: the traced graphs.
    def graphs() -> int:
        import gc

        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, tf.Graph))

    _fit(layers, x, y, ours=True)
    before = graphs()
    for _ in range(3):
        _fit(layers, x, y, ours=True)
    assert graphs() <= before
    _fit(layers, x, y, ours=False)
    assert graphs() > before, "the measurement sees what Keras' own step leaves behind"


def _pool_rss(worker: psutil.Process) -> int:
    return sum(child.memory_info().rss for child in worker.children(recursive=True))


def _own(settings: Settings, home: Path, queue: str, max_memory: int) -> Settings:
    """Settings with a database, stores and queue of their own: no other worker's reconciler sees these jobs."""
    return Settings(
        home=home,
        redis_url=settings.redis_url,
        keras_cache=settings.keras_cache,
        queue=queue,
        worker_max_memory_bytes=max_memory,
    )


@pytest.fixture(scope="module")
def soak(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, psutil.Process]]:
    """A worker of its own (one training process, the recycling backstop far away) and the API to feed it."""
    from service.api.app import create_app

    root = tmp_path_factory.mktemp("soak")
    own = _own(settings, root / "home", "soak", 64 * 1024 * MIB)
    with running_worker(own, root / "worker.log") as worker, TestClient(create_app(own)) as client:
        yield client, psutil.Process(worker.process.pid)


def _run_jobs(client: TestClient, count: int, body: dict[str, Any], timeout: float = 600) -> list[dict[str, Any]]:
    ids = []
    for _ in range(count):
        response = client.post("/train", json=body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
    # One training process takes them in order: when the last one has finished, all have.
    deadline = time.monotonic() + timeout
    while client.get(f"/jobs/{ids[-1]}").json()["status"] not in FINISHED:
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.5)
    jobs = [client.get(f"/jobs/{job_id}").json() for job_id in ids]
    assert all(job["status"] in FINISHED for job in jobs)
    return jobs


def _small_job() -> dict[str, Any]:
    body = chapter_request(epochs=1)  # the chapter's model on digits: a new traced step per job, as any job
    body["fit"]["batch_size"] = 256
    return body


@pytest.mark.slow
@pytest.mark.timeout(600)  # sixty trainings: the same bound as the jobs' own deadline in _run_jobs
def test_sixty_jobs_leave_the_worker_as_they_found_it(soak: tuple[TestClient, psutil.Process]) -> None:
    # 4 MiB a job, as the growth was, would be 160 MiB over the last forty: far past the 10% this allows.
    client, worker = soak
    warm = _run_jobs(client, 20, _small_job())
    assert all(job["status"] == "succeeded" for job in warm)
    pids = {job["worker"] for job in warm}
    after_warm_up = _pool_rss(worker)
    rest = _run_jobs(client, 40, _small_job())
    assert all(job["status"] == "succeeded" for job in rest)
    assert {job["worker"] for job in rest} == pids, "one pool process ran them all: nothing was recycled"
    after = _pool_rss(worker)
    print(f"\npool process after 20 jobs: {after_warm_up / MIB:.0f} MiB, after 60: {after / MIB:.0f} MiB")
    assert after <= after_warm_up * 1.10


@pytest.mark.slow
def test_a_pool_process_past_its_memory_limit_is_replaced_between_jobs(settings: Settings, tmp_path: Path) -> None:
    """With a limit every pool process passes after one job, each job runs in a fresh process: every job still
    succeeds once, with one attempt and one model."""
    from service.api.app import create_app

    own = _own(settings, tmp_path / "home", "recycled", 64 * MIB)
    with running_worker(own, tmp_path / "worker.log"), TestClient(create_app(own)) as client:
        models_before = client.get("/models").json()["count"]
        jobs = _run_jobs(client, 4, _small_job())
        models_after = client.get("/models").json()["count"]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    assert [job["attempts"] for job in jobs] == [1] * 4
    assert len({job["worker"] for job in jobs}) == 4, "each job in a fresh pool process"
    assert models_after - models_before == 4
