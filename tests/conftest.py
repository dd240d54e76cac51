"""Real parts for the tests: a throwaway Redis server, a Celery worker process, the HTTP app, files on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from fastapi.testclient import TestClient

from bench.data import write_fashion_mnist
from bench.processes import serving
from service.embedded import free_port, start_redis, start_worker, stop_process
from service.settings import Settings

FINISHED = {"succeeded", "failed", "cancelled"}

# The fuzz suites: 300 examples per parser in the normal run, ten thousand with --long-fuzz.
hypothesis.settings.register_profile("trainserve", max_examples=300)
hypothesis.settings.register_profile("long", max_examples=10_000)
hypothesis.settings.load_profile("trainserve")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long-fuzz",
        action="store_true",
        help="Run the fuzz suites (tests/test_fuzz.py, tests/test_schema_fuzz.py) some thirty times longer.",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--long-fuzz"):
        hypothesis.settings.load_profile("long")


def long_fuzz(config: pytest.Config) -> bool:
    return bool(config.getoption("--long-fuzz"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = start_redis(tmp_path_factory.mktemp("redis"), port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway PostgreSQL server (the pgserver wheel) with an empty database."""
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE trainserve;")
        uri: str = server.get_uri("trainserve")
        yield uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def keras_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("keras-home")
    # Keras' cache layout with a small learnable Fashion-MNIST: keras.datasets.fashion_mnist loads it offline.
    write_fashion_mnist(home, train=600, test=100)
    return home


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, redis_url: str, keras_cache: Path) -> Settings:
    return Settings(
        home=tmp_path_factory.mktemp("trainserve-home"),
        redis_url=redis_url,
        keras_cache=keras_cache,
        queue=f"test-{os.getpid()}",
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSERVE_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TRAINSERVE_{name.upper()}"] = str(value)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def wait_for_log(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{path.read_text(errors='replace')}")
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} not in {path} after {timeout} s:\n{path.read_text(errors='replace')}")


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log


@contextmanager
def running_worker(settings: Settings, log: Path, **env: str) -> Iterator[WorkerProcess]:
    """A real `trainserve worker` (Celery, prefork pool) with these settings, from ready until the block ends."""
    with log.open("wb") as out:
        process = start_worker(settings_env(settings) | env, out)
    try:
        wait_for_log(log, " ready.", process)
        yield WorkerProcess(process, log)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The session's worker, consuming the test queue."""
    with running_worker(settings, tmp_path_factory.mktemp("worker") / "worker.log") as process:
        yield process


@pytest.fixture(scope="session")
def client(settings: Settings, worker: WorkerProcess) -> Iterator[TestClient]:
    from service.api.app import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


def wait_for_job(client: TestClient, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def train(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/train", json=body)
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["job_id"])


def chapter_request(
    dataset: str = "digits", activation: str = "relu", optimizer: Any = "adam", epochs: int = 3
) -> dict[str, Any]:
    """The chapter's Flatten → Dense(100) → Dense(10, softmax) model, as a request body."""
    from service.examples import chapter_examples

    suffix = "sigmoid" if activation == "sigmoid" else "relu_adam"
    body = chapter_examples()[f"{dataset}_{suffix}"]
    body["compile"]["optimizer"] = optimizer
    body["fit"]["epochs"] = epochs
    return body


def small_cnn_request(epochs: int = 2) -> dict[str, Any]:
    """The book's 8-2 CNN made small, on digits as (8, 8, 1) images: two convolutions to look inside."""
    return {
        "name": "digits cnn",
        "model": {
            "input_shape": [8, 8],
            "layers": [
                {"type": "reshape", "target_shape": [8, 8, 1]},
                {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu", "padding": "same"},
                {"type": "max_pooling2d", "pool_size": 2},
                {"type": "conv2d", "filters": 16, "kernel_size": [3, 3], "activation": "relu", "padding": "same"},
                {"type": "flatten"},
                {"type": "dense", "units": 10, "activation": "softmax"},
            ],
        },
        "compile": {"optimizer": "adam"},
        "dataset": {"name": "digits", "rescale": 1 / 16, "test_size": 0.2, "random_state": 42},
        "fit": {"epochs": epochs, "seed": 42},
    }


@pytest.fixture(scope="session")
def live_url(settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API served for real by `trainserve api` (uvicorn), for clients that speak HTTP: browsers, the CLI,
    event-stream readers."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "service.cli", "api", "--port", url.rpartition(":")[2]]
    log = tmp_path_factory.mktemp("api") / "api.log"
    with serving(command, settings_env(settings), log, f"{url}/healthz"):
        yield url


def chapter_model_in_keras(
    hidden: str = "hidden",
    output: str = "output",
    input_shape: tuple[int, ...] = (28, 28),
    activation: str = "sigmoid",
    name: str = "패션 MNIST 모델",
    seed: int | None = None,
) -> Any:
    """The chapter's model written directly in Keras, as its reader would: the reference our summaries and
    trainings must match (the book's Fashion-MNIST sigmoid model by default; ``seed`` as the script would set it
    before building)."""
    import keras

    keras.backend.clear_session()
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation=activation, name=hidden),
            keras.layers.Dense(10, activation="softmax", name=output),
        ],
        name=name,
    )


def printed_summary(model: Any) -> str:
    """What ``model.summary()`` prints."""
    printed: list[str] = []
    model.summary(print_fn=lambda text, **_: printed.append(text))
    return "".join(printed)
