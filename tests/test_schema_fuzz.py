"""The OpenAPI document says exactly what the service does: Schemathesis, with every check and every phase
(examples, coverage, fuzzing, and the stateful phase that follows the links between operations: POST /train to
its job, its events and its cancel; POST /datasets to the upload; the lists to their items), run against the real
API served by uvicorn. No 5xx; no schema-valid request refused but for what tests/schemathesis.toml lists (checks
against the data a request names, which no schema can state); no schema-invalid request accepted; every answer,
status and header as documented.

The API has one trained model and dataset to find, and queues to a queue no worker reads: the jobs the fuzzer
creates are recorded and never trained. `pytest tests/test_schema_fuzz.py --long-fuzz` runs 300 examples per
operation instead of 40.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.processes import serving
from service.embedded import free_port
from service.settings import Settings
from tests.conftest import chapter_request, long_fuzz, running_worker, settings_env, train
from tests.datafiles import images_zip, upload

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def fuzzed_api(redis_url: str, keras_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("schema-fuzz")
    own = Settings(
        home=root / "home",
        redis_url=redis_url,
        keras_cache=keras_cache,
        queue="schema-fuzz-models",
        max_model_params=200_000,
        event_stream_max_seconds=1,  # a stream of a job that never runs ends, so a request on it does too
    )
    # One model and one upload for the fuzzer to find, trained by a worker that is gone before it starts.
    from service.api.app import create_app

    with running_worker(own, root / "worker.log"), TestClient(create_app(own)) as client:
        job = train(client, chapter_request(epochs=1) | {"name": "digits"})
        assert job["status"] == "succeeded", job["error"]
        status, _ = upload(client, "colours.zip", images_zip(per_class=2, size=4), image_size="4,4")
        assert status == 201
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = settings_env(own) | {"TRAINSERVE_QUEUE": "schema-fuzz-unconsumed"}
    command = [sys.executable, "-m", "service.cli", "api", "--port", str(port)]
    with serving(command, env, root / "api.log", f"{url}/healthz"):
        yield url
    assert "unexpected error" not in (root / "api.log").read_text(errors="replace")


def test_the_openapi_document_is_exactly_what_the_service_does(
    fuzzed_api: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    examples = 300 if long_fuzz(request.config) else 40
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(CONFIG),
            "run",
            f"{fuzzed_api}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(examples),
            "--seed",
            "20261201",
            "--no-color",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    output = result.stdout + result.stderr
    print("\n" + "\n".join(line for line in output.splitlines() if re.search(r"Links:|generated|Scenarios:", line)))
    assert result.returncode == 0, output[-20_000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", output)
    assert summary is not None, output[-5000:]
    assert int(summary[1]) == int(summary[2]) > 30 * examples, summary[0]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅\s+{phase}", output), f"the {phase} phase did not pass:\n{output[-5000:]}"
    # Generated data reaches past validation: some requests succeed, others are refused, none fails.
    metrics = httpx.get(f"{fuzzed_api}/metrics").text
    statuses = {int(code) for code in re.findall(r'trainserve_http_requests_total\{[^}]*status="(\d+)"', metrics)}
    assert any(200 <= code < 300 for code in statuses), statuses
    assert any(400 <= code < 500 for code in statuses), statuses
    assert not any(code >= 500 for code in statuses), statuses
