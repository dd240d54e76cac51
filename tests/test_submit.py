"""The submit path on its own, as anything that queues jobs uses it: a real database and a real Redis, no HTTP and
no worker (the queue's messages are read back from Redis, not run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service import jobs
from service.db import JobStatus, session_scope
from service.embedded import free_port
from service.queue import JobQueue, marker
from service.settings import Settings
from service.spec import TrainRequest
from service.submit import IdempotencyConflictError, InvalidRequestError, QueueUnavailableError, submit
from tests.conftest import chapter_request


@pytest.fixture
def own(tmp_path: Path, redis_url: str, keras_cache: Path) -> Iterator[tuple[Settings, JobQueue]]:
    """Settings with their own database and queue name, so nothing here reaches the session's worker."""
    settings = Settings(home=tmp_path, redis_url=redis_url, keras_cache=keras_cache, queue=f"submit-{free_port()}")
    queue = JobQueue(settings)
    yield settings, queue
    queue.redis.delete(settings.queue)
    queue.close()


def spec(**changes: int) -> TrainRequest:
    body = chapter_request(epochs=changes.get("epochs", 1))
    return TrainRequest.model_validate(body)


def test_submit_records_and_queues_one_job(own: tuple[Settings, JobQueue]) -> None:
    settings, queue = own
    with session_scope(settings.database_url) as session:
        submitted = submit(spec(), session=session, settings=settings, queue=queue)
    assert submitted.status is JobStatus.QUEUED
    assert not submitted.replayed
    assert submitted.build is not None
    assert submitted.build.total_params == 7510
    with session_scope(settings.database_url) as session:
        job = jobs.get_job(session=session, job_id=submitted.job_id)
        assert job is not None
        assert job.status == JobStatus.QUEUED
        assert job.dispatched_at is not None
    assert queue.sent([submitted.job_id]) == {submitted.job_id}
    assert queue.depth()[0] == 1


def test_idempotency_key_replays_or_conflicts(own: tuple[Settings, JobQueue]) -> None:
    settings, queue = own
    with session_scope(settings.database_url) as session:
        first = submit(spec(), session=session, settings=settings, queue=queue, idempotency_key="k")
        again = submit(spec(), session=session, settings=settings, queue=queue, idempotency_key="k")
        assert again.job_id == first.job_id
        assert again.replayed
        assert again.build is None
        with pytest.raises(IdempotencyConflictError) as conflict:
            submit(spec(epochs=2), session=session, settings=settings, queue=queue, idempotency_key="k")
    assert conflict.value.job_id == first.job_id
    assert queue.depth()[0] == 1, "a replay queues nothing"


def test_refusals_name_the_field_and_keep_nothing(own: tuple[Settings, JobQueue]) -> None:
    settings, queue = own
    limited = settings.model_copy(update={"max_epochs": 5})
    with session_scope(settings.database_url) as session:
        with pytest.raises(InvalidRequestError) as over:
            submit(
                TrainRequest.model_validate(chapter_request(epochs=6)), session=session, settings=limited, queue=queue
            )
        assert over.value.problems[0][0] == ("fit", "epochs")
        assert "TRAINSERVE_MAX_EPOCHS" in over.value.problems[0][1]
        wrong = chapter_request()
        wrong["model"]["layers"].insert(1, {"type": "conv2d", "filters": 4, "kernel_size": 3})
        with pytest.raises(InvalidRequestError) as unbuildable:
            submit(TrainRequest.model_validate(wrong), session=session, settings=settings, queue=queue)
        assert unbuildable.value.problems[0][0][:3] == ("model", "layers", 1)
        assert jobs.list_jobs(session=session, status=None, limit=10, offset=0)[1] == 0
    assert queue.depth()[0] == 0


def test_a_broker_that_is_down_leaves_no_job(own: tuple[Settings, JobQueue]) -> None:
    settings, _ = own
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    queue = JobQueue(down)
    try:
        with session_scope(settings.database_url) as session:
            with pytest.raises(QueueUnavailableError):
                submit(spec(), session=session, settings=down, queue=queue)
            assert jobs.list_jobs(session=session, status=None, limit=10, offset=0)[1] == 0
    finally:
        queue.close()


def test_the_marker_goes_with_the_message(own: tuple[Settings, JobQueue], redis_url: str) -> None:
    settings, queue = own
    with session_scope(settings.database_url) as session:
        submitted = submit(spec(), session=session, settings=settings, queue=queue)
    assert redis.Redis.from_url(redis_url).exists(marker(submitted.job_id))
    queue.taken(submitted.job_id)
    assert queue.sent([submitted.job_id]) == set()
