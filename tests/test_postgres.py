"""The same code on PostgreSQL, as a multi-host deployment runs it: job state changes are compare-and-set there too,
and a worker trains against it. The server is a throwaway one from the pgserver wheel."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from service import jobs
from service.db import JobStatus, get_engine, session_scope, utcnow
from service.embedded import start_worker, stop_process
from service.settings import Settings
from service.spec import TrainRequest
from tests.conftest import chapter_request, settings_env, train, wait_for_log

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE trainserve;")
        uri: str = server.get_uri("trainserve")
        yield uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        server.cleanup()


def new_job(url: str) -> str:
    with session_scope(url) as session:
        job = jobs.create_job(session=session, request=TrainRequest.model_validate(chapter_request()))
        return job.id


def test_only_one_of_many_concurrent_claims_wins(postgres_url: str) -> None:
    assert "PostgreSQL" in str(get_engine(postgres_url).connect().execute(text("select version()")).scalar())
    job_id = new_job(postgres_url)
    outcomes: list[jobs.Claim] = []
    barrier = threading.Barrier(8)

    def claim(worker: int) -> None:
        barrier.wait()
        with session_scope(postgres_url) as session:
            outcomes.append(
                jobs.claim_job(
                    session=session,
                    job_id=job_id,
                    worker_id=f"host-{worker}:1",
                    lease_seconds=30,
                    max_attempts=3,
                    holder_alive=lambda _: True,
                )
            )

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.value for o in outcomes) == ["claimed"] + ["not_claimable"] * 7
    with session_scope(postgres_url) as session:
        job = jobs.get_job(session=session, job_id=job_id)
        assert job is not None
        assert job.status == JobStatus.RUNNING
        assert job.attempts == 1


def test_orphans_are_released_once_and_idempotency_keys_are_unique(postgres_url: str) -> None:
    job_id = new_job(postgres_url)
    with session_scope(postgres_url) as session:
        jobs.claim_job(
            session=session,
            job_id=job_id,
            worker_id="gone:1",
            lease_seconds=0.01,
            max_attempts=3,
            holder_alive=lambda _: True,
        )
    with session_scope(postgres_url) as session:
        orphans = [
            j for j in jobs.orphaned_jobs(session=session, now=utcnow() + timedelta(seconds=1)) if j.id == job_id
        ]
    assert len(orphans) == 1
    results = []
    for _ in range(2):  # two reconcilers looking at the same row: one wins
        with session_scope(postgres_url) as session:
            results.append(jobs.release_orphan(session=session, job=orphans[0], max_attempts=3))
    assert results == [JobStatus.QUEUED, None]

    request = TrainRequest.model_validate(chapter_request())
    with session_scope(postgres_url) as session:
        jobs.create_job(session=session, request=request, idempotency_key="same", request_sha256="x")
    with pytest.raises(IntegrityError), session_scope(postgres_url) as session:
        jobs.create_job(session=session, request=request, idempotency_key="same", request_sha256="x")


def test_a_worker_trains_against_postgresql(
    postgres_url: str, redis_url: str, keras_cache: Path, tmp_path: Path
) -> None:
    from service.api.app import create_app

    settings = Settings(
        home=tmp_path, database_url=postgres_url, redis_url=redis_url, keras_cache=keras_cache, queue="postgres"
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = start_worker(settings_env(settings), out)
    try:
        wait_for_log(log, " ready.", worker)
        with TestClient(create_app(settings)) as client:
            job = train(client, chapter_request(epochs=2))
            assert job["status"] == "succeeded", job["error"]
            assert [row["epoch"] for row in job["history"]] == [1, 2]
            summary = client.get(f"/models/{job['model_id']}/summary").json()
            assert summary["total_params"] == 7_510
    finally:
        stop_process(worker)
