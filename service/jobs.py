"""Job and model records: every state change of a job is one of these functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service import registry
from service.db import EpochRow, JobRow, JobStatus, ModelRow, utcnow
from service.spec import TrainRequest


def create_job(*, session: Session, request: TrainRequest) -> JobRow:
    job = JobRow(
        name=request.name,
        status=JobStatus.QUEUED,
        spec=request.model_dump(mode="json"),
        epochs=request.fit.epochs,
    )
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, job_id: str) -> JobRow | None:
    return session.get(JobRow, job_id)


def list_jobs(*, session: Session, status: JobStatus | None, limit: int, offset: int) -> tuple[Sequence[JobRow], int]:
    query = select(JobRow)
    if status is not None:
        query = query.where(JobRow.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit).offset(offset)).all()
    return rows, count


def job_history(*, session: Session, job_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Finished epochs per job, in order: ``{"epoch": 1, "loss": …, "accuracy": …, "val_loss": …}``."""
    history: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        rows = session.scalars(
            select(EpochRow).where(EpochRow.job_id.in_(job_ids)).order_by(EpochRow.job_id, EpochRow.epoch)
        )
        for row in rows:
            history[row.job_id].append({"epoch": row.epoch, **row.metrics})
    return history


def claim_job(*, session: Session, job_id: str) -> bool:
    """queued → running, as one compare-and-set: of two deliveries of the same message, only one trains."""
    claimed = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, started_at=utcnow(), attempts=JobRow.attempts + 1, epoch=0)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    # A retried job starts over: drop the epochs of an earlier attempt.
    session.execute(delete(EpochRow).where(EpochRow.job_id == job_id))
    return True


def record_epoch(*, session: Session, job_id: str, epoch: int, metrics: dict[str, float | None]) -> None:
    session.add(EpochRow(job_id=job_id, epoch=epoch, metrics=metrics))
    session.execute(update(JobRow).where(JobRow.id == job_id).values(epoch=epoch))


def complete_job(*, session: Session, job_id: str, model: ModelRow, evaluation: dict[str, float | None] | None) -> bool:
    """running → succeeded and the model published, in one transaction. False if the job is no longer running."""
    done = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.RUNNING)
        .values(status=JobStatus.SUCCEEDED, finished_at=utcnow(), model_id=model.id, evaluation=evaluation)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        return False
    registry.add_version(session=session, model=model)
    return True


def fail_job(*, session: Session, job_id: str, error_type: str, message: str) -> None:
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .values(status=JobStatus.FAILED, finished_at=utcnow(), error_type=error_type, error_message=message)
    )


def get_model(*, session: Session, model_id: str) -> ModelRow | None:
    return session.get(ModelRow, model_id)


def list_models(*, session: Session, limit: int, offset: int) -> tuple[Sequence[ModelRow], int]:
    count = session.scalar(select(func.count()).select_from(ModelRow)) or 0
    rows = session.scalars(
        select(ModelRow).order_by(ModelRow.created_at.desc(), ModelRow.id.desc()).limit(limit).offset(offset)
    ).all()
    return rows, count
