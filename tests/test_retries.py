"""A worker's writes while the database comes and goes: tried again with backoff (``db.retried``), and each one
idempotent, since a commit whose answer was lost is tried again. A real SQLite database; the database going away
is a real PostgreSQL stopped and started again in tests/test_cluster.py."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from service import jobs
from service.db import EpochRow, JobRow, ModelRow, new_id, retried, session_scope
from service.spec import TrainRequest
from tests.conftest import chapter_request


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def _running_job(url: str, worker: str = "host-a:1") -> str:
    with session_scope(url) as session:
        job = jobs.create_job(session=session, request=TrainRequest.model_validate(chapter_request()))
        job_id = job.id
    with session_scope(url) as session:
        claim = jobs.claim_job(
            session=session,
            job_id=job_id,
            worker_id=worker,
            lease_seconds=30,
            max_attempts=3,
            holder_alive=lambda _: True,
        )
    assert claim is jobs.Claim.CLAIMED
    return job_id


def _model(job_id: str) -> ModelRow:
    return ModelRow(
        id=new_id(),
        name="m",
        job_id=job_id,
        spec={},
        dataset={},
        input_shape=[8, 8],
        metrics={},
        summary={},
        keras_names={},
        path="m.keras",
        sha256="0" * 64,
        size_bytes=1,
    )


def test_an_epoch_written_twice_is_one_row(url: str) -> None:
    job_id = _running_job(url)
    for _ in range(2):  # the second: a retry of a commit whose answer was lost
        with session_scope(url) as session:
            assert jobs.record_epoch(
                session=session, job_id=job_id, worker_id="host-a:1", attempt=1, epoch=1, metrics={"loss": 0.5}
            )
    with session_scope(url) as session:
        assert len(session.scalars(select(EpochRow).where(EpochRow.job_id == job_id)).all()) == 1
        # Another attempt's worker (cut off, its job taken over) writes nothing.
        assert not jobs.record_epoch(
            session=session, job_id=job_id, worker_id="host-b:2", attempt=1, epoch=2, metrics={"loss": 0.4}
        )


def test_a_job_ended_twice_by_its_attempt_is_ended_once(url: str) -> None:
    job_id = _running_job(url)
    model = _model(job_id)

    def complete(session: Session) -> bool:
        return jobs.complete_job(
            session=session, job_id=job_id, worker_id="host-a:1", attempt=1, model=model, evaluation=None
        )

    assert retried(url, complete, what="test", seconds=0)
    # Retried after its commit went through: it finds its own result, not "taken over" (which would have the
    # worker remove the model file the record names).
    assert retried(url, complete, what="test", seconds=0)
    with session_scope(url) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        assert (job.status, job.model_id) == ("succeeded", model.id)
        assert len(session.scalars(select(ModelRow).where(ModelRow.job_id == job_id)).all()) == 1
        # Nor does anyone else's attempt finish it, or fail it.
        assert not jobs.complete_job(
            session=session, job_id=job_id, worker_id="host-b:2", attempt=2, model=_model(job_id), evaluation=None
        )
        assert not jobs.fail_job(
            session=session, job_id=job_id, worker_id="host-a:1", attempt=1, error_type="x", message="y"
        )

    failing = _running_job(url)
    for _ in range(2):
        with session_scope(url) as session:
            assert jobs.fail_job(
                session=session, job_id=failing, worker_id="host-a:1", attempt=1, error_type="E", message="m"
            )


def test_writes_are_tried_again_while_the_database_is_unreachable(url: str) -> None:
    calls: list[float] = []

    def flaky(session: Session) -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return "written"

    assert retried(url, flaky, what="test", seconds=30) == "written"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert [round(gap, 1) >= least for gap, least in zip(gaps, (0.2, 0.4, 0.8), strict=True)] == [True] * 3, gaps

    calls.clear()
    started = time.monotonic()
    with pytest.raises(OperationalError):
        retried(url, flaky, what="test", seconds=0.5)
    assert time.monotonic() - started < 2, "it gives up once its time is spent"

    def broken(session: Session) -> Any:
        calls.append(0)
        raise IntegrityError("INSERT", {}, Exception("duplicate"))

    calls.clear()
    with pytest.raises(IntegrityError):
        retried(url, broken, what="test", seconds=30)
    assert len(calls) == 1, "a write that is wrong is not tried again"
