"""The `trainserve` command, run as a user runs it, against the API served by uvicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.conftest import chapter_request

pytestmark = pytest.mark.slow


def trainserve(url: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINSERVE_URL": url, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def spec_file(tmp_path: Path, body: dict[str, object], name: str = "spec.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_train_watch_summary_predict(live_url: str, tmp_path: Path) -> None:
    result = trainserve(live_url, "train", spec_file(tmp_path, chapter_request(epochs=3)), "--watch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded: model " in result.stdout
    assert "queued (7,510 parameters)" in result.stdout
    assert "3/3" in result.stdout
    assert "val_accuracy" in result.stdout
    model_id = result.stdout.split("succeeded: model ")[1].split()[0]

    summary = trainserve(live_url, "summary", model_id)
    assert summary.returncode == 0
    assert summary.stdout == httpx.get(f"{live_url}/models/{model_id}/summary", params={"format": "text"}).text
    assert "Total params: 7,510" in summary.stdout

    batch = tmp_path / "digits.npy"
    digits = load_digits()
    np.save(batch, digits.images[:5].astype(np.float32))
    predicted = trainserve(live_url, "predict", model_id, str(batch))
    assert predicted.returncode == 0, predicted.stderr
    cells = [line.replace("│", " ").split() for line in predicted.stdout.splitlines()]
    rows = [row for row in cells if len(row) == 3 and row[0].isdigit()]
    assert len(rows) == 5
    answer = httpx.post(
        f"{live_url}/predict", json={"model_id": model_id, "instances": digits.images[:5].tolist()}
    ).json()
    assert [int(row[1]) for row in rows] == answer["classes"]

    listing = trainserve(live_url, "jobs", "--limit", "5")
    assert listing.returncode == 0
    assert model_id in listing.stdout
    models = trainserve(live_url, "models")
    assert models.returncode == 0
    assert model_id in models.stdout
    assert "7,510" in models.stdout


def test_exit_codes_follow_the_job(live_url: str, tmp_path: Path) -> None:
    failing = chapter_request("fashion_mnist")
    failing["dataset"] = {"name": "mnist"}
    failed = trainserve(live_url, "train", spec_file(tmp_path, failing), "--watch")
    assert failed.returncode == 1
    assert "failed: DatasetUnavailable" in failed.stdout

    typo = chapter_request()
    typo["model"]["layers"][1]["activation"] = "sigmod"
    refused = trainserve(live_url, "train", spec_file(tmp_path, typo, "typo.json"))
    assert refused.returncode == 2
    assert "model.layers[1].activation" in refused.stderr or "did you mean 'sigmoid'?" in refused.stderr

    long = chapter_request(epochs=300)
    long["fit"]["batch_size"] = 8
    env = {**os.environ, "TRAINSERVE_URL": live_url, "COLUMNS": "200"}
    watching = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "train", spec_file(tmp_path, long, "long.json"), "--watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        job_id = None
        while job_id is None:
            assert time.monotonic() < deadline
            jobs = httpx.get(f"{live_url}/jobs", params={"status": "running", "limit": 5}).json()["data"]
            job_id = next((j["job_id"] for j in jobs if j["progress"]["epochs"] == 300), None)
            time.sleep(0.2)
        assert httpx.post(f"{live_url}/jobs/{job_id}/cancel").status_code == 202
        out, _ = watching.communicate(timeout=60)
    finally:
        watching.kill()
    assert watching.returncode == 3
    assert "cancelled" in out


def test_unreachable_service_is_a_clear_error(tmp_path: Path) -> None:
    result = trainserve("http://127.0.0.1:9", "jobs")
    assert result.returncode == 2
    assert "cannot reach TrainServe at http://127.0.0.1:9" in result.stderr


def test_names_are_shown_as_written_never_read_as_markup(live_url: str) -> None:
    """A job named like rich markup ('[/]' once crashed `trainserve jobs`) is printed as it is."""
    for name in ("[/]", "[bold red]loud[/bold red]"):
        response = httpx.post(f"{live_url}/train", json=chapter_request(epochs=1) | {"name": name})
        assert response.status_code == 202, response.text
    listing = trainserve(live_url, "jobs", "--limit", "2")
    assert listing.returncode == 0, listing.stderr
    assert "[/]" in listing.stdout
    assert "[bold red]loud[/bold red]" in listing.stdout
