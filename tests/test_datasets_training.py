"""Uploaded datasets end to end: uploaded over HTTP, trained on by the real worker, predicted on; and a 50 MB upload
to a real API process whose peak memory is read from /proc."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.embedded import free_port, stop_process
from service.settings import Settings
from tests.conftest import settings_env, train, wait_for_job
from tests.datafiles import COLOURS, blobs, colour_image, csv_bytes, images_zip, npz_bytes, png_bytes, upload

pytestmark = pytest.mark.slow


def _request(dataset: dict[str, Any], input_shape: list[int], units: int, **compile: Any) -> dict[str, Any]:
    return {
        "model": {
            "input_shape": input_shape,
            "layers": [
                {"type": "flatten"},
                {"type": "dense", "units": units, "activation": "sigmoid" if units == 1 else "softmax"},
            ],
        },
        "compile": {"optimizer": {"type": "adam", "learning_rate": 0.02}, **compile},
        "dataset": dataset,
        "fit": {"epochs": 12, "batch_size": 8, "seed": 1},
    }


def test_train_on_uploaded_images_then_predict_in_pixels(client: TestClient) -> None:
    status, dataset = upload(client, "colours.zip", images_zip(per_class=10, size=12), image_size="8,8")
    assert status == 201, dataset
    dataset_id = dataset["dataset_id"]
    body = _request({"id": dataset_id, "rescale": 1 / 255}, [8, 8, 3], 3)
    response = client.post("/train", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    # In use by a queued (or by now running) job: it stays.
    refused = client.delete(f"/datasets/{dataset_id}")
    assert refused.status_code == 409
    assert refused.json()["error"]["type"] == "dataset_in_use"
    assert job_id in refused.json()["error"]["message"]

    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["class_names"] == ["blue", "green", "red"]
    assert model["dataset"]["id"] == dataset_id
    assert model["dataset"]["rescale"] == pytest.approx(1 / 255)

    # New images in pixel units (0–255), as a user would send them; the model's rescale is applied for them.
    rng = np.random.default_rng(99)
    colours = ["red", "blue", "green", "green", "red", "blue"]
    instances = [colour_image(colour, 8, rng).tolist() for colour in colours]
    answer = client.post("/predict", json={"model_id": job["model_id"], "instances": instances}).json()
    assert answer["labels"] == colours

    # Once the job has ended the dataset can go; the model trained on it stays usable.
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    again = client.post("/predict", json={"model_id": job["model_id"], "instances": instances[:1]})
    assert again.status_code == 200
    assert again.json()["labels"] == ["red"]


def test_npz_test_split_is_evaluated_with_one_hot_labels(client: TestClient) -> None:
    x, y = blobs(120, features=4, classes=3, seed=5)
    content = npz_bytes(x_train=x[:90], y_train=y[:90], x_test=x[90:], y_test=y[90:])
    status, dataset = upload(client, "blobs-with-test.npz", content)
    assert status == 201, dataset
    # categorical_crossentropy: the worker one-hot encodes the stored class numbers.
    body = _request({"id": dataset["dataset_id"]}, [4], 3, loss="categorical_crossentropy")
    body["fit"]["epochs"] = 40
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    assert job["evaluation"] is not None
    assert job["evaluation"]["accuracy"] > 0.9
    answer = client.post("/predict", json={"model_id": job["model_id"], "instances": x[90:100].tolist()}).json()
    assert answer["classes"] == y[90:100].tolist()
    assert answer["labels"] is None


def test_csv_with_text_labels_trains_a_binary_classifier(client: TestClient) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for i in range(80):
        spam = i % 2 == 1
        rows.append((rng.normal(5 if spam else 1), rng.normal(0), "spam" if spam else "ham"))
    status, dataset = upload(client, "mail.csv", csv_bytes(["links", "length", "kind"], rows), label_column="kind")
    assert status == 201, dataset
    assert dataset["class_names"] == ["ham", "spam"]
    body = _request({"id": dataset["dataset_id"], "test_size": 0.25, "random_state": 0, "stratify": True}, [2], 1)
    body["compile"]["loss"] = "binary_crossentropy"
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    answer = client.post("/predict", json={"model_id": job["model_id"], "instances": [[6.0, 0.0], [0.5, 0.0]]})
    assert answer.json()["labels"] == ["spam", "ham"]


# --- memory -------------------------------------------------------------------------------------------------------


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _noise_zip(path: Path, target_bytes: int, side: int = 256) -> None:
    """PNGs of noise (incompressible) in two class folders, stored as they are: a zip of ``target_bytes``."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        i = 0
        while path.stat().st_size < target_bytes:
            pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            zf.writestr(f"{list(COLOURS)[i % 2]}/{i:04d}.png", png_bytes(pixels))
            i += 1


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read peak memory")
def test_a_50_mb_upload_does_not_pass_through_memory(settings: Settings, tmp_path: Path) -> None:
    big = tmp_path / "big.zip"
    _noise_zip(big, 50 * 1024 * 1024)
    size = big.stat().st_size
    small = tmp_path / "small.zip"
    _noise_zip(small, 1024 * 1024)

    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)

        def send(path: Path) -> httpx.Response:
            with path.open("rb") as f:  # httpx streams the file from disk in chunks
                return httpx.post(
                    f"{base}/datasets", files={"file": (path.name, f)}, data={"image_size": "8,8"}, timeout=120
                )

        warm = send(small)  # every code path of an upload has run once before measuring
        assert warm.status_code == 201, warm.text

        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from now
        before = _memory_kib(process.pid)["VmRSS"]
        response = send(big)
        assert response.status_code == 201, response.text
        assert response.json()["x_shape"][1:] == [8, 8, 3]
        growth_mib = (_memory_kib(process.pid)["VmHWM"] - before) / 1024
        size_mib = size / (1024 * 1024)
        print(f"\n{size_mib:.1f} MiB upload: the API's peak resident memory grew by {growth_mib:.1f} MiB")
        assert growth_mib < size_mib / 5
    finally:
        stop_process(process)
        log.close()
