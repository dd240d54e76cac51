"""The same code on PostgreSQL, as a multi-host deployment runs it: job state changes are compare-and-set there too,
and a worker trains against it. The server is a throwaway one from the pgserver wheel."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from service import jobs
from service.db import JobStatus, get_engine, session_scope, utcnow
from service.settings import Settings
from service.spec import TrainRequest
from tests.conftest import chapter_request, running_worker, train

pytestmark = pytest.mark.slow


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
    with running_worker(settings, tmp_path / "worker.log"), TestClient(create_app(settings)) as client:
        job = train(client, chapter_request(epochs=2))
        assert job["status"] == "succeeded", job["error"]
        assert [row["epoch"] for row in job["history"]] == [1, 2]
        summary = client.get(f"/models/{job['model_id']}/summary").json()
        assert summary["total_params"] == 7_510


def test_an_experiment_on_postgresql_is_one_optuna_study_every_replica_shares(
    postgres_url: str, redis_url: str, keras_cache: Path, tmp_path: Path
) -> None:
    """Submitted through one API replica, followed through another, trained by a worker: the study lives in
    Optuna's tables of the same PostgreSQL database, and says what the service says."""
    import optuna

    from service.api.app import create_app
    from service.examples import experiment_examples

    settings = Settings(
        home=tmp_path, database_url=postgres_url, redis_url=redis_url, keras_cache=keras_cache, queue="pg-experiments"
    )
    body = experiment_examples()["experiment_activation"]
    body["base"]["fit"]["epochs"] = 1
    with (
        running_worker(settings, tmp_path / "worker.log"),
        TestClient(create_app(settings)) as one,
        TestClient(create_app(settings)) as other,
    ):
        answer = one.post("/experiments", json=body)
        assert answer.status_code == 202, answer.text
        experiment_id = answer.json()["experiment_id"]
        deadline = time.monotonic() + 120
        while (experiment := other.get(f"/experiments/{experiment_id}").json())["status"] == "running":
            assert time.monotonic() < deadline, experiment
            time.sleep(0.2)
        assert experiment["status"] == "succeeded", experiment
    study = optuna.load_study(study_name=f"trainserve-{experiment_id}", storage=postgres_url)
    told = {trial.number: (trial.state.name, trial.value) for trial in study.trials}
    assert told == {t["number"]: ("COMPLETE", t["objective"]) for t in experiment["trials"]}
    assert study.best_trial.number == experiment["best"]["number"]
    assert [t["params"]["model.layers[1].activation"] for t in experiment["trials"]] == ["sigmoid", "relu"]


def test_a_worker_cut_off_cannot_write_into_the_attempt_that_took_its_job_over(postgres_url: str) -> None:
    """Worker A's lease runs out while it is stalled; B takes the job over. A's epochs, lease renewals and outcome
    are all refused: only B's attempt writes, and the history is B's."""
    job_id = new_job(postgres_url)
    with session_scope(postgres_url) as session:
        jobs.claim_job(
            session=session, job_id=job_id, worker_id="a:1", lease_seconds=0.01, max_attempts=3, holder_alive=bool
        )
    with session_scope(postgres_url) as session:
        assert jobs.record_epoch(session=session, job_id=job_id, worker_id="a:1", attempt=1, epoch=1, metrics={})
    time.sleep(0.05)  # A's lease runs out
    with session_scope(postgres_url) as session:
        claim = jobs.claim_job(
            session=session, job_id=job_id, worker_id="b:1", lease_seconds=30, max_attempts=3, holder_alive=bool
        )
    assert claim is jobs.Claim.CLAIMED
    with session_scope(postgres_url) as session:
        assert not jobs.record_epoch(
            session=session, job_id=job_id, worker_id="a:1", attempt=1, epoch=2, metrics={"loss": 9.0}
        )
        assert jobs.renew_lease(session=session, job_id=job_id, worker_id="a:1", attempt=1, lease_seconds=30) == (
            False,
            False,
        )
        jobs.fail_job(session=session, job_id=job_id, worker_id="a:1", attempt=1, error_type="X", message="stale")
        assert jobs.record_epoch(
            session=session, job_id=job_id, worker_id="b:1", attempt=2, epoch=1, metrics={"loss": 1.0}
        )
    with session_scope(postgres_url) as session:
        job = jobs.get_job(session=session, job_id=job_id)
        assert job is not None
        assert (job.status, job.attempts, job.worker_id, job.error_type) == (JobStatus.RUNNING, 2, "b:1", None)
        assert jobs.job_history(session=session, job_ids=[job_id])[job_id] == [{"epoch": 1, "loss": 1.0}]


def test_names_with_control_characters_are_refused_before_the_database(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL refuses NUL in text: such a name is a 422 naming the field, never a 500."""
    from service.api.app import create_app

    settings = Settings(home=tmp_path, database_url=postgres_url, redis_url="", queue="postgres-names")
    with TestClient(create_app(settings)) as client:
        for body, path in (
            (chapter_request() | {"name": "job\x00name"}, "name"),
            ({**chapter_request(), "model": {**chapter_request()["model"], "name": "m\x00"}}, "model.name"),
        ):
            response = client.post("/train", json=body)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["errors"][0]["path"] == path
        for filename in ("x" * 600 + ".csv", "a\x00b.csv"):
            # Written by hand: HTTP clients escape a NUL in a file name, an attacker need not.
            form = (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="'
                + filename.encode()
                + b'"\r\n\r\na,label\n1,x\n2,y\n\r\n--b--\r\n'
            )
            response = client.post(
                "/datasets", content=form, headers={"Content-Type": "multipart/form-data; boundary=b"}
            )
            assert response.status_code == 422, response.text
            assert response.json()["error"]["errors"][0]["path"] == "file"
        response = client.post("/datasets", files={"file": ("ok.csv", b"a,label\n1,x\n2,y\n")}, data={"name": "n\x00"})
        assert response.status_code == 422
        assert response.json()["error"]["errors"][0]["path"] == "name"
