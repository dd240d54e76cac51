"""One request must never take the service down: hostile requests sent to a real `trainserve api` process.

The API and a worker run under memory ceilings (tests/bounded.py), with their own database, stores and queue and
limits set for the test; each test sends what an attacker or a careless client would, and asserts that the
process stays up, answers a 4xx that names the limit, and that its peak resident memory grew by less than a stated
bound.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from bench.processes import serving
from service.embedded import free_port, start_worker, stop_process
from service.settings import Settings
from tests.bounded import MIB, Ceiling, PeakMemory, ceiling
from tests.conftest import FINISHED, chapter_request, settings_env, wait_for_log
from tests.datafiles import blobs, npz_bytes
from tests.hostile_files import (
    crafted_uploads,
    images_of,
    long_label_csv,
    npy_bytes,
    npy_with_header,
    repeated_entry_zip,
    uniform_png,
)

pytestmark = pytest.mark.slow

LIMITS = {
    "TRAINSERVE_MAX_REQUEST_BYTES": str(64 * MIB),
    "TRAINSERVE_MAX_INFLIGHT_BYTES": str(160 * MIB),
    "TRAINSERVE_MAX_DATASET_BYTES": str(256 * MIB),
    "TRAINSERVE_DATASET_QUOTA_BYTES": str(96 * MIB),
    "TRAINSERVE_MAX_ACTIVATION_BYTES": str(64 * MIB),
    "TRAINSERVE_MAX_TRAINING_DATA_BYTES": str(1024 * MIB),
    "TRAINSERVE_MAX_EVENT_STREAMS": "30",
    "TRAINSERVE_MAX_EVENT_STREAMS_PER_CLIENT": "20",
    "TRAINSERVE_EVENT_STREAM_MAX_SECONDS": "3",
    "TRAINSERVE_BODY_TIMEOUT": "4",
}
CEILING = 3 * 1024 * MIB


@dataclass
class Hostile:
    url: str
    pid: int
    ceiling: Ceiling
    worker_ceiling: Ceiling
    log: Path

    def http(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def assert_alive(self) -> None:
        assert not self.ceiling.oom_killed(), f"the API was stopped at its {CEILING // MIB} MiB memory ceiling"
        assert not self.worker_ceiling.oom_killed(), f"the worker was stopped at its {CEILING // MIB} MiB ceiling"
        assert psutil.pid_exists(self.pid), f"the API process died:\n{self.log.read_text(errors='replace')[-3000:]}"
        assert httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200

    def train(self, body: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
        with self.http() as http:
            response = http.post("/train", json=body)
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
                if job["status"] in FINISHED:
                    return job
                time.sleep(0.2)
        raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def hostile(redis_url: str, keras_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    own = Settings(home=root / "home", redis_url=redis_url, keras_cache=keras_cache, queue="hostile")
    env = settings_env(own) | LIMITS
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "api", "--port", str(port)]
    with ExitStack() as stack:
        with (root / "worker.log").open("wb") as out:
            worker = start_worker(env, out)
        stack.callback(stop_process, worker)
        worker_bound = stack.enter_context(ceiling(worker, CEILING))
        wait_for_log(root / "worker.log", " ready.", worker)
        process = stack.enter_context(serving(command, env, root / "api.log", f"{url}/healthz"))
        api = Hostile(url, process.pid, stack.enter_context(ceiling(process, CEILING)), worker_bound, root / "api.log")
        # Every code path below has run once before any peak is measured.
        with api.http() as http:
            http.get("/datasets/digits/samples", params={"n": 1})
        yield api


def error_of(response: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, response.text[:2000]
    error: dict[str, Any] = response.json()["error"]
    return error


def upload(http: httpx.Client, filename: str, content: bytes, **fields: str) -> httpx.Response:
    return http.post("/datasets", files={"file": (filename, content)}, data=fields)


# --- 1. the body limit cannot be lifted by the client ------------------------------------------------------------


def test_a_multipart_content_type_does_not_lift_the_body_limit(hostile: Hostile) -> None:
    body = b"x" * (65 * MIB)
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    with hostile.http() as http:
        for path in ("/predict", "/train", "/jobs"):
            error = error_of(http.post(path, content=body, headers=headers), 413)
            assert "TRAINSERVE_MAX_REQUEST_BYTES" in error["message"], path
        tf_serving = http.post("/v1/models/m:predict", content=body, headers=headers)
        assert tf_serving.status_code == 413
        assert "TRAINSERVE_MAX_REQUEST_BYTES" in tf_serving.json()["error"]  # TF Serving's own error format
    hostile.assert_alive()


# --- 2. memory follows what a client sends, not what it says it will send ----------------------------------------


def _stall(url: str, path: str, declared: int, sent: bytes, content_type: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {declared}\r\n\r\n"
    conn.sendall(head.encode() + sent)
    return conn


def _read_answer(conn: socket.socket) -> bytes:
    """One whole HTTP answer (head and a Content-Length body), however the server split it into segments."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = conn.recv(65536)
        if not piece:
            return answer
        answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            break
        body += piece
    return head + b"\r\n\r\n" + body


def test_stalled_bodies_hold_only_what_they_sent(hostile: Hostile) -> None:
    with PeakMemory(hostile.pid) as peak:
        stalled = [
            _stall(hostile.url, "/predict?model=m", 60 * MIB, b"\x93NUMPY", "application/x-npy") for _ in range(8)
        ]
        stalled += [_stall(hostile.url, "/v2/models/m/infer", 60 * MIB, b"{", "application/json") for _ in range(4)]
        time.sleep(1.5)
        hostile.assert_alive()
    for conn in stalled:
        conn.close()
    print(f"\n12 stalled bodies declaring 60 MiB each: peak grew by {peak.growth_mib:.1f} MiB")
    assert peak.growth_mib < 32


def test_a_body_that_stops_arriving_is_a_408_in_its_protocol(hostile: Hostile) -> None:
    timeout = float(LIMITS["TRAINSERVE_BODY_TIMEOUT"])
    native = _stall(hostile.url, "/predict?model=m", 10 * MIB, b"\x93NUMPY" + b"\x00" * 1000, "application/x-npy")
    tf_serving = _stall(hostile.url, "/v1/models/m:predict", 10 * MIB, b'{"instances": [', "application/json")
    started = time.monotonic()
    answers = []
    for conn in (native, tf_serving):
        conn.settimeout(timeout + 10)
        answers.append(_read_answer(conn))
        conn.close()
    waited = time.monotonic() - started
    assert answers[0].startswith(b"HTTP/1.1 408"), answers[0][:300]
    assert b'"type":"request_timeout"' in answers[0]
    assert b"TRAINSERVE_BODY_TIMEOUT" in answers[0]
    assert answers[1].startswith(b"HTTP/1.1 408"), answers[1][:300]
    assert b'{"error":"the request body stopped arriving' in answers[1]  # TF Serving's own format
    assert timeout - 0.5 <= waited <= timeout + 2.5, waited
    hostile.assert_alive()


def test_bodies_in_flight_share_one_budget(hostile: Hostile) -> None:
    """Two 60 MiB bodies half sent hold 120 MiB of the 160 MiB budget: a third large body is a 503, not more
    memory; once they are gone the same body is read."""
    chunk = b"\x00" * (1 * MIB)
    held = [_stall(hostile.url, "/predict?model=m", 60 * MIB, b"", "application/x-npy") for _ in range(2)]
    try:
        for conn in held:
            for _ in range(58):
                conn.sendall(chunk)
        time.sleep(1.0)
        with hostile.http() as http:
            response = http.post(
                "/predict", params={"model": "m"}, content=b"\x00" * (50 * MIB), headers={"Content-Type": "x/y"}
            )
        error = error_of(response, 503)
        assert "TRAINSERVE_MAX_INFLIGHT_BYTES" in error["message"]
        assert response.headers["retry-after"]
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.5)
    with hostile.http() as http:
        response = http.post(
            "/predict", params={"model": "m"}, content=b"\x00" * (50 * MIB), headers={"Content-Type": "x/y"}
        )
    assert response.status_code in (404, 422), response.text  # read, then refused for what it is
    hostile.assert_alive()


# --- 3. decoding is counted before it is done ---------------------------------------------------------------------


def test_a_csv_with_one_long_label_stays_small(hostile: Hostile) -> None:
    content = long_label_csv()  # 0.7 MB: 30,000 rows, one 40,000-character label
    with PeakMemory(hostile.pid) as peak, hostile.http() as http:
        response = upload(http, "labels.csv", content)
    hostile.assert_alive()
    print(f"\n{len(content) / MIB:.1f} MiB CSV with a 40,000-character label: peak grew by {peak.growth_mib:.1f} MiB")
    error = error_of(response, 422)
    assert "TRAINSERVE_MAX_LABEL_LENGTH" in error["message"]
    assert error["errors"][0]["path"] == "file"
    assert peak.growth_mib < 64


def test_one_hot_labels_are_counted_at_submit(hostile: Hostile) -> None:
    """1,000,000 rows × 10,000 classes one-hot would be 40 GB of float32 in the worker."""
    rows = 1_000_000
    content = npz_bytes(x=np.zeros((rows, 1), np.float32), y=np.arange(rows, dtype=np.int32) % 10_000)
    with hostile.http() as http:
        created = upload(http, "many classes.npz", content)
        assert created.status_code in (200, 201), created.text
        dataset_id = created.json()["dataset_id"]
        body: dict[str, Any] = {
            "model": {"input_shape": [1], "layers": [{"type": "dense", "units": 10_000, "activation": "softmax"}]},
            "compile": {"optimizer": "adam", "loss": "categorical_crossentropy"},
            "dataset": {"id": dataset_id},
            "fit": {"epochs": 1},
        }
        with PeakMemory(hostile.pid) as peak:
            error = error_of(http.post("/train", json=body), 422)
        assert "TRAINSERVE_MAX_TRAINING_DATA_BYTES" in error["message"]
        assert error["errors"][0]["path"] == "compile.loss"
        body["compile"]["loss"] = "sparse_categorical_crossentropy"  # integer labels: 8 MB
        accepted = http.post("/train", json=body)
        assert accepted.status_code == 202, accepted.text
        assert http.post(f"/jobs/{accepted.json()['job_id']}/cancel").status_code in (200, 202)
    assert peak.growth_mib < 32
    hostile.assert_alive()


# --- 4. answers and stored datasets are bounded ------------------------------------------------------------------


def test_samples_of_large_images_are_bounded(hostile: Hostile) -> None:
    with hostile.http() as http:
        created = upload(http, "big images.zip", images_of(4, 1024), image_size="1024,1024", color_mode="rgba")
        assert created.status_code == 201, created.text
        dataset = created.json()
        assert dataset["size_bytes"] < 4 * 1024 * 1024 * 4 + MIB, "pixels are stored as bytes, not float32"
        with PeakMemory(hostile.pid) as peak:
            response = http.get(f"/datasets/{dataset['dataset_id']}/samples", params={"n": 4})
            error = error_of(response, 422)
            assert "TRAINSERVE_MAX_RESPONSE_BYTES" in error["message"]
            assert error["errors"][0]["path"] == "query.n"
            images = http.get(f"/datasets/{dataset['dataset_id']}/samples", params={"n": 2, "values": "false"})
        assert images.status_code == 200, images.text
        assert all(s["x"] is None and s["image"].startswith("data:image/png") for s in images.json()["samples"])
        http.delete(f"/datasets/{dataset['dataset_id']}")
    print(f"\nsamples of 1024×1024 RGBA images: peak grew by {peak.growth_mib:.1f} MiB")
    assert peak.growth_mib < 96
    hostile.assert_alive()


def test_uploads_count_against_a_quota(hostile: Hostile) -> None:
    with hostile.http() as http:
        # 128 images of 1024×1024×4 would be 512 MiB of bytes (2 GiB as float32): over TRAINSERVE_MAX_DATASET_BYTES
        error = error_of(upload(http, "many.zip", images_of(128, 1024), image_size="1024,1024", color_mode="rgba"), 413)
        assert "TRAINSERVE_MAX_DATASET_BYTES" in error["message"]
        # 28 of them are 112 MiB: within the per-dataset limit, over the 96 MiB quota
        error = error_of(upload(http, "some.zip", images_of(28, 1024), image_size="1024,1024", color_mode="rgba"), 413)
        assert "TRAINSERVE_DATASET_QUOTA_BYTES" in error["message"]
    hostile.assert_alive()


# --- 5. one file, repeated work ---------------------------------------------------------------------------------


def test_a_zip_listing_one_huge_image_many_times_is_refused_quickly(hostile: Hostile) -> None:
    content = repeated_entry_zip(uniform_png(8000, 5000), 1000)  # one 40-megapixel PNG, listed 1,000 times
    assert len(content) < 200_000
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with hostile.http(timeout=30) as http:
            while not done.is_set() or not latencies:
                started = time.monotonic()
                http.get("/jobs", params={"limit": 1})
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    with ThreadPoolExecutor(1) as pool:
        prober = pool.submit(probe)
        started = time.monotonic()
        with PeakMemory(hostile.pid) as peak, hostile.http(timeout=60) as http:
            response = upload(http, "repeat.zip", content)
        elapsed = time.monotonic() - started
        done.set()
        prober.result()
    error = error_of(response, 422)
    assert "more than once" in error["message"]
    assert elapsed < 10
    assert max(latencies) < 2, latencies
    assert peak.growth_mib < 256
    hostile.assert_alive()


# --- 6. activations are counted, and predictions run in chunks -----------------------------------------------------


WIDE_CONV = [
    {"type": "reshape", "target_shape": [8, 8, 1]},
    {"type": "conv2d", "filters": 4096, "kernel_size": 3, "padding": "same"},
    {"type": "flatten"},
    {"type": "dense", "units": 2, "activation": "softmax"},
]


def test_activation_memory_is_counted_at_submit_and_predictions_run_in_chunks(hostile: Hostile) -> None:
    """Each instance of this model needs ~2 MiB of activations: 10,000 of them at once would be 20 GiB."""
    x, y = blobs(16, features=64, classes=2, seed=4)
    with hostile.http() as http:
        status = upload(http, "wide.npz", npz_bytes(x=x.reshape(16, 8, 8), y=y))
    assert status.status_code in (200, 201), status.text
    dataset = {"id": status.json()["dataset_id"]}
    body = {
        "model": {"input_shape": [8, 8], "layers": WIDE_CONV},
        "compile": {"optimizer": "adam"},
        "dataset": dataset,
        "fit": {"epochs": 1, "batch_size": 1024},
    }
    with hostile.http() as http:
        error = error_of(http.post("/train", json=body), 422)
    assert error["errors"][0]["path"] == "fit.batch_size"
    assert "TRAINSERVE_MAX_ACTIVATION_BYTES" in error["message"]

    body["fit"] = {"epochs": 1, "batch_size": 8}
    job = hostile.train(body)
    assert job["status"] == "succeeded", job["error"]

    instances = np.random.default_rng(0).uniform(0, 16, size=(10_000, 8, 8)).astype(np.float32)
    with PeakMemory(hostile.pid) as peak, hostile.http(timeout=300) as http:
        response = http.post(
            "/predict",
            params={"model_id": job["model_id"]},
            content=npy_bytes(instances),
            headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
        )
    hostile.assert_alive()
    assert response.status_code == 200, response.text
    print(f"\n10,000 instances of ~2 MiB of activations each: peak grew by {peak.growth_mib:.1f} MiB")
    assert peak.growth_mib < 512


# --- 7. event streams are bounded -------------------------------------------------------------------------------


@pytest.fixture
def queued_job(hostile: Hostile) -> Iterator[str]:
    """A job that stays queued: the worker's one training process is busy with a long job meanwhile."""
    long = chapter_request(epochs=1000)
    long["fit"]["batch_size"] = 4
    with hostile.http() as http:
        busy = http.post("/train", json=long).json()["job_id"]
        waiting = http.post("/train", json=chapter_request(epochs=1)).json()["job_id"]
        deadline = time.monotonic() + 60
        while http.get(f"/jobs/{busy}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert http.get(f"/jobs/{waiting}").json()["status"] == "queued"
        yield waiting
        for job_id in (waiting, busy):
            http.post(f"/jobs/{job_id}/cancel")


def test_event_streams_are_capped_and_share_one_poll(hostile: Hostile, queued_job: str) -> None:
    clients = [httpx.Client(base_url=hostile.url, timeout=30) for _ in range(21)]
    streams = []
    try:
        for http in clients[:20]:
            stream = http.stream("GET", f"/jobs/{queued_job}/events")
            streams.append(stream)
            assert stream.__enter__().status_code == 200
        refused = clients[20].get(f"/jobs/{queued_job}/events")
        error = error_of(refused, 429)
        assert "TRAINSERVE_MAX_EVENT_STREAMS_PER_CLIENT" in error["message"]
        assert refused.headers["retry-after"]
        process = psutil.Process(hostile.pid)
        before = process.cpu_times()
        time.sleep(2.0)
        after = process.cpu_times()
        cpu = (after.user + after.system) - (before.user + before.system)
        print(f"\n20 streams of one queued job for 2 s: {cpu:.2f} s of the API's CPU")
        assert cpu < 0.4
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
        for http in clients:
            http.close()
    hostile.assert_alive()


def test_a_queued_jobs_stream_ends_and_can_be_resumed(hostile: Hostile, queued_job: str) -> None:
    with hostile.http() as http:
        started = time.monotonic()
        with http.stream("GET", f"/jobs/{queued_job}/events") as response:
            text = "".join(response.iter_text())
        assert time.monotonic() - started < 10  # TRAINSERVE_EVENT_STREAM_MAX_SECONDS is 3 here
    assert "event: status" in text
    assert "retry:" in text


# --- 8. crafted input is a 4xx in the protocol's format ---------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "fields", "accepted"),
    [case[1:] for case in crafted_uploads()],
    ids=[case[0] for case in crafted_uploads()],
)
def test_crafted_uploads_are_refused_with_a_short_reason(
    hostile: Hostile, filename: str, content: bytes, fields: dict[str, str], accepted: bool
) -> None:
    with hostile.http() as http:
        response = upload(http, filename, content, **fields)
    hostile.assert_alive()
    if accepted:
        assert response.status_code in (200, 201), response.text[:2000]
        return
    assert 400 <= response.status_code < 500, response.text[:2000]
    error = response.json()["error"]
    assert len(response.content) < 4096, "a short message"
    assert error["errors"], error
    assert error["errors"][0]["path"] in ("file", "image_size", "label_column")


def test_crafted_predict_bodies_are_refused_in_each_protocols_format(hostile: Hostile) -> None:
    job = hostile.train(chapter_request(epochs=1) | {"name": "hostile-digits"})
    assert job["status"] == "succeeded", job["error"]
    boolean_shape = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (True, 8, 8), }", bytes(256))
    with hostile.http() as http:
        native = http.post(
            "/predict",
            params={"model_id": job["model_id"]},
            content=boolean_shape,
            headers={"Content-Type": "application/x-npy"},
        )
        assert error_of(native, 422)["errors"][0]["path"] == "body"
        v2 = http.post(
            "/v2/models/hostile-digits/infer",
            json={"inputs": [{"name": "input", "shape": [True, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]},
        )
        assert v2.status_code == 400, v2.text
        assert "shape" in v2.json()["error"]
    hostile.assert_alive()


def test_a_client_follows_a_job_across_streams_the_service_ends(hostile: Hostile) -> None:
    """Streams here last 3 s; a job that trains longer is followed to its end over several, each epoch once."""
    from trainserve import Client
    from trainserve.records import EpochEvent, StatusEvent

    body = chapter_request(epochs=25)
    body["fit"]["batch_size"] = 4
    with hostile.http() as http:
        job_id = http.post("/train", json=body).json()["job_id"]
    started = time.monotonic()
    with Client(url=hostile.url) as client:
        events = list(client.job(job_id).events())
    assert time.monotonic() - started > 3, "the job outlived one stream"
    epochs = [event.row["epoch"] for event in events if isinstance(event, EpochEvent)]
    assert epochs == list(range(1, 26))
    assert isinstance(events[-1], StatusEvent)
    assert events[-1].state["status"] == "succeeded"
