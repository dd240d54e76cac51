"""Model names and versions on real databases: SQLite, and PostgreSQL when its server binaries are installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from service import registry
from service.db import JobRow, JobStatus, ModelRow, new_id, session_scope
from service.embedded import free_port
from service.registry import ModelRef, parse_reference


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server (initdb + pg_ctl), or a skip where PostgreSQL is not installed."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    directory = Path(tempfile.mkdtemp(prefix="trainserve-pg-"))
    directory.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    data, port = directory / "data", free_port()
    run = {"check": True, "capture_output": True}
    subprocess.run(_as_postgres(initdb, "-D", str(data), "-A", "trust", "-U", "postgres"), **run)  # type: ignore[call-overload]
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [pg_ctl, "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start"]
    subprocess.run(_as_postgres(*start), **run)  # type: ignore[call-overload]
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "stop"), check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _running_job(url: str, name: str) -> str:
    with session_scope(url) as session:
        job = JobRow(name=name, status=JobStatus.RUNNING, spec={}, epochs=1)
        session.add(job)
        session.flush()
        return job.id


def _publish(url: str, job_id: str, name: str) -> str:
    """What a worker does when its job ends: the job row changes, then the model is added, in one transaction."""
    model = ModelRow(
        id=new_id(),
        name=name,
        job_id=job_id,
        spec={},
        dataset={},
        input_shape=[4],
        class_names=None,
        metrics={},
        evaluation=None,
        summary={},
        keras_names={},
        path="x.keras",
        sha256="0" * 64,
        size_bytes=1,
    )
    with session_scope(url) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(status=JobStatus.SUCCEEDED))
        registry.add_version(session=session, model=model)
    return model.id


def test_jobs_of_one_name_finishing_together_get_versions_one_to_n(database_url: str) -> None:
    name = "iris 분류기"
    jobs = [_running_job(database_url, name) for _ in range(6)]
    other = _publish(database_url, _running_job(database_url, "another name"), "another name")
    barrier = threading.Barrier(len(jobs))
    published: dict[str, str] = {}
    errors: list[BaseException] = []

    def finish(job_id: str) -> None:
        try:
            barrier.wait()
            published[job_id] = _publish(database_url, job_id, name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(job_id,)) for job_id in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with session_scope(database_url) as session:
        rows = registry.versions(session=session, name=name)
        assert [row.version for row in rows] == [6, 5, 4, 3, 2, 1]
        assert {row.id for row in rows} == set(published.values())
        latest = registry.find(session=session, ref=ModelRef(name=name))
        assert latest is not None
        assert latest.version == 6
        second = registry.find(session=session, ref=parse_reference(f"{name}@2"))
        assert second is not None
        assert (second.name, second.version) == (name, 2)
        assert registry.find(session=session, ref=parse_reference(f"{name}@7")) is None
        assert registry.find(session=session, ref=ModelRef(model_id=other)) is not None
        assert [row.version for row in registry.versions(session=session, name="another name")] == [1]


def test_references_name_a_version_only_with_a_number_after_the_last_at() -> None:
    assert parse_reference("digits") == ModelRef(name="digits")
    assert parse_reference("digits@3") == ModelRef(name="digits", version=3)
    assert parse_reference("me@example@12") == ModelRef(name="me@example", version=12)
    assert parse_reference("me@example") == ModelRef(name="me@example")
    assert str(ModelRef(name="digits", version=3)) == "digits@3"
