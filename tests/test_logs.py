"""Structured logs: with TRAINSERVE_LOG_FORMAT=json every line is one JSON object, and what a worker logs while it
trains a job carries that job's id."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from service import jobs
from service.db import session_scope
from service.logs import configure_logging
from service.settings import Settings
from service.spec import TrainRequest
from tests.conftest import chapter_request
from worker.training import run_job


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_json_lines_carry_the_job_id(
    settings: Settings, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    # The training code called directly, as the Celery task calls it (no message is sent for this job).
    with session_scope(settings.database_url) as session:
        job_id = jobs.create_job(session=session, request=TrainRequest.model_validate(chapter_request(epochs=1))).id
    configure_logging("INFO", "json")
    logging.getLogger("service").info("outside any job")
    assert run_job(job_id, settings) == "succeeded"

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lines, "JSON lines on stderr"
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    outside = next(line for line in lines if line["message"] == "outside any job")
    assert "job_id" not in outside
    training = [line for line in lines if line.get("job_id") == job_id]
    assert any("attempt 1 started" in line["message"] for line in training)
    assert any("succeeded" in line["message"] for line in training)
