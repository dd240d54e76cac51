"""`trainserve serve` as a user runs it: one command, then train, predict, Ctrl-C, nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from sklearn.datasets import load_digits

from service.embedded import free_port
from tests.conftest import chapter_request

pytestmark = pytest.mark.slow


def test_serve_runs_everything_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSERVE_")}
    env["TRAINSERVE_HOME"] = str(tmp_path / "data")
    log = tmp_path / "serve.log"
    trainserve = Path(sys.executable).with_name("trainserve")
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [str(trainserve), "serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    family: list[psutil.Process] = []
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert serve.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            family = psutil.Process(serve.pid).children(recursive=True)
            names = " ".join(" ".join(p.cmdline()) for p in family)
            assert "redis-server" in names
            assert "service.cli worker" in names

            created = http.post("/train", json=chapter_request(epochs=2))
            assert created.status_code == 202, created.text
            job_id = created.json()["job_id"]
            while (job := http.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline + 120, log.read_text()
                time.sleep(0.3)
            assert job["status"] == "succeeded", job["error"]
            images = load_digits().images[:3].tolist()
            predicted = http.post("/predict", json={"model_id": job["model_id"], "instances": images})
            assert predicted.status_code == 200
            assert len(predicted.json()["classes"]) == 3
    finally:
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            returncode = serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            raise
    assert returncode == 0, log.read_text()
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    # The embedded Redis keeps its queue on disk, in the data directory.
    assert (tmp_path / "data" / "redis").is_dir()
    assert (tmp_path / "data" / "trainserve.db").is_file()
