"""Job records: every state change of a job is one of these functions (its model is published through the
registry, in the same transaction)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, delete, func, select, update
from sqlalchemy.orm import Session

from service import registry
from service.db import (
    FINISHED_STATUSES,
    EpochDurationRow,
    EpochRow,
    JobRow,
    JobStatus,
    ModelRow,
    epoch_bucket,
    utcnow,
)
from service.settings import DEFAULT_POOL
from service.spec import TrainRequest


def create_job(
    *, session: Session, request: TrainRequest, idempotency_key: str | None = None, request_sha256: str | None = None
) -> JobRow:
    job = JobRow(
        name=request.name,
        status=JobStatus.QUEUED,
        spec=request.model_dump(mode="json"),
        epochs=request.fit.epochs,
        idempotency_key=idempotency_key,
        request_sha256=request_sha256,
        pool=pool_of(request),
    )
    session.add(job)
    session.flush()
    return job


def pool_of(request: TrainRequest) -> str | None:
    """The pool a job's row records: None for the default pool."""
    pool = request.resources.pool_name
    return None if pool == DEFAULT_POOL else pool


def queued_by_pool(*, session: Session) -> dict[str, int]:
    """Queued jobs per pool (the default pool as ``DEFAULT_POOL``)."""
    rows = session.execute(
        select(JobRow.pool, func.count()).where(JobRow.status == JobStatus.QUEUED).group_by(JobRow.pool)
    )
    return {pool or DEFAULT_POOL: int(count) for pool, count in rows}


def get_job(*, session: Session, job_id: str) -> JobRow | None:
    return session.get(JobRow, job_id)


def get_job_by_idempotency_key(*, session: Session, key: str) -> JobRow | None:
    return session.scalar(select(JobRow).where(JobRow.idempotency_key == key))


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


def count_epochs(*, session: Session, job_ids: Sequence[str]) -> int:
    if not job_ids:
        return 0
    return int(session.scalar(select(func.count()).select_from(EpochRow).where(EpochRow.job_id.in_(job_ids))) or 0)


def last_epochs(*, session: Session, job_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each job's last finished epoch alone (an empty list before its first)."""
    history: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        last = (
            select(EpochRow.job_id, func.max(EpochRow.epoch).label("epoch"))
            .where(EpochRow.job_id.in_(job_ids))
            .group_by(EpochRow.job_id)
            .subquery()
        )
        rows = session.scalars(
            select(EpochRow).join(last, (EpochRow.job_id == last.c.job_id) & (EpochRow.epoch == last.c.epoch))
        )
        for row in rows:
            history[row.job_id] = [{"epoch": row.epoch, **row.metrics}]
    return history


class Claim(enum.Enum):
    CLAIMED = "claimed"  # this worker runs the job now
    NOT_CLAIMABLE = "not_claimable"  # ended, cancelled, or running under a live lease elsewhere
    EXHAUSTED = "exhausted"  # its workers died too often: now failed


def claim_job(
    *,
    session: Session,
    job_id: str,
    worker_id: str,
    lease_seconds: float,
    max_attempts: int,
    holder_alive: Callable[[str], bool],
) -> Claim:
    """Start the job in this worker, as one compare-and-set on its row: of two deliveries of the same message,
    only one trains. A job still `running` is taken over only when its holder is gone: its lease ran out, or
    ``holder_alive`` says the process that held it has died (a pool child killed on this host).

    A job with a checkpoint resumes after the checkpoint's epoch: the epochs up to it stay in its history, later
    ones (recorded after its last checkpoint, so trained again) go. Without one it starts over."""
    job = session.get(JobRow, job_id, populate_existing=True)
    if job is None:
        return Claim.NOT_CLAIMABLE
    now = utcnow()
    if job.status == JobStatus.QUEUED:
        condition = [JobRow.status == JobStatus.QUEUED]
    elif job.status == JobStatus.RUNNING and not job.cancel_requested and _orphaned(job, now, holder_alive):
        condition = [
            JobRow.status == JobStatus.RUNNING,
            JobRow.worker_id == job.worker_id,
            JobRow.attempts == job.attempts,
        ]
    else:
        return Claim.NOT_CLAIMABLE
    resumed = job.checkpoint if checkpoint_file(job.checkpoint) else None
    # A holder whose lease ran out while it stalled may still record a checkpoint until this claim commits (and
    # then remove the file it replaced): the claim holds only if the checkpoint it resumes from is still the one.
    where = [JobRow.id == job_id, *condition, _recorded_file() == (checkpoint_file(job.checkpoint) or "")]
    if job.attempts >= max_attempts:
        failed = session.execute(
            update(JobRow)
            .where(*where)
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                error_type="WorkerLost",
                error_message=worker_lost_message(job.attempts),
            )
        )
        return Claim.EXHAUSTED if changed(failed) else Claim.NOT_CLAIMABLE
    claimed = session.execute(
        update(JobRow)
        .where(*where)
        .values(
            status=JobStatus.RUNNING,
            started_at=now,
            attempts=JobRow.attempts + 1,
            epoch=0 if resumed is None else resumed["epoch"],
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            checkpoint=None if resumed is None else {**resumed, "resumed_from_epoch": resumed["epoch"]},
        )
    )
    if not changed(claimed):
        return Claim.NOT_CLAIMABLE
    dropped = delete(EpochRow).where(EpochRow.job_id == job_id)
    if resumed is not None:
        dropped = dropped.where(EpochRow.epoch > resumed["epoch"])
    session.execute(dropped)
    return Claim.CLAIMED


def checkpoint_file(checkpoint: dict[str, Any] | None) -> str | None:
    """The file a job's checkpoint record names, if it names one (an ended job's names none)."""
    name = (checkpoint or {}).get("file")
    return name if isinstance(name, str) else None


def resumed_from_epoch(checkpoint: dict[str, Any] | None) -> int | None:
    """The epoch the job's current (or last) attempt resumed after; None for one that started from the first."""
    epoch = (checkpoint or {}).get("resumed_from_epoch")
    return epoch if isinstance(epoch, int) else None


def _ended(resumed_from: int | None) -> dict[str, Any] | None:
    """What a job's checkpoint record keeps once the job has ended and its file is gone: where its last attempt
    resumed from."""
    return None if resumed_from is None else {"resumed_from_epoch": resumed_from}


def _recorded_file() -> ColumnElement[str]:
    """The checkpoint file a row names, '' for none (SQL NULL and JSON null alike), as an SQL expression."""
    return func.coalesce(JobRow.checkpoint["file"].as_string(), "")


def worker_lost_message(attempts: int) -> str:
    return f"the worker died while training this job, {attempts} time(s) out of {attempts} allowed attempt(s)"


def _orphaned(job: JobRow, now: datetime, holder_alive: Callable[[str], bool]) -> bool:
    if job.lease_expires_at is not None and job.lease_expires_at < now:
        return True
    return job.worker_id is not None and not holder_alive(job.worker_id)


def changed(result: Any) -> bool:
    """Whether a compare-and-set UPDATE moved its one row (else another process got there first)."""
    return int(result.rowcount) == 1


def _holds(job_id: str, worker_id: str, attempt: int) -> list[Any]:
    """The job is running under this worker's claim, in this attempt: the fence on every write a run makes. A
    worker cut off while another took its job over matches neither, whatever it still tries to write."""
    return [
        JobRow.id == job_id,
        JobRow.status == JobStatus.RUNNING,
        JobRow.worker_id == worker_id,
        JobRow.attempts == attempt,
    ]


def renew_lease(
    *, session: Session, job_id: str, worker_id: str, attempt: int, lease_seconds: float
) -> tuple[bool, bool]:
    """Extend this worker's lease on a running job. Returns (still ours, cancel requested)."""
    renewed = session.execute(
        update(JobRow)
        .where(*_holds(job_id, worker_id, attempt))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    cancel = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
    return changed(renewed), bool(cancel)


def record_epoch(
    *,
    session: Session,
    job_id: str,
    worker_id: str,
    attempt: int,
    epoch: int,
    metrics: dict[str, float | None],
    seconds: float | None = None,
) -> bool:
    """Add a finished epoch to the job's history; False (and nothing written) if the job is no longer this
    attempt's."""
    moved = session.execute(update(JobRow).where(*_holds(job_id, worker_id, attempt)).values(epoch=epoch))
    if not changed(moved):
        return False
    if session.scalar(select(EpochRow.id).where(EpochRow.job_id == job_id, EpochRow.epoch == epoch)) is not None:
        return True  # written by this very call before, whose commit's answer was lost: a retry (db.retried)
    session.add(EpochRow(job_id=job_id, epoch=epoch, metrics=metrics, seconds=seconds))
    if seconds is not None:
        session.execute(
            update(EpochDurationRow)
            .where(EpochDurationRow.le == epoch_bucket(seconds))
            .values(epochs=EpochDurationRow.epochs + 1, seconds=EpochDurationRow.seconds + seconds)
        )
    return True


def record_checkpoint(
    *, session: Session, job_id: str, worker_id: str, attempt: int, checkpoint: dict[str, Any]
) -> bool:
    """Name the file that holds this attempt's latest checkpoint; False (and nothing written) if the job is no
    longer this attempt's: a worker cut off never replaces the checkpoint of the attempt that took its job over."""
    return changed(
        session.execute(update(JobRow).where(*_holds(job_id, worker_id, attempt)).values(checkpoint=checkpoint))
    )


def start_over(*, session: Session, job_id: str, worker_id: str, attempt: int) -> bool:
    """This attempt cannot resume from the job's checkpoint: the job starts again from its first epoch, without
    the epochs the claim kept. False if the job is no longer this attempt's."""
    moved = session.execute(update(JobRow).where(*_holds(job_id, worker_id, attempt)).values(epoch=0, checkpoint=None))
    if not changed(moved):
        return False
    session.execute(delete(EpochRow).where(EpochRow.job_id == job_id))
    return True


def checkpoint_bytes(*, session: Session, excluding: str) -> int:
    """Bytes the recorded checkpoints of the jobs that may still resume take together, but for the job
    ``excluding``'s own (its next checkpoint replaces it)."""
    size = func.sum(cast(JobRow.checkpoint["size_bytes"].as_string(), BigInteger))  # past 2 GiB too
    total = session.scalar(
        select(func.coalesce(size, 0)).where(
            JobRow.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)), JobRow.id != excluding
        )
    )
    return int(total or 0)


def jobs_by_id(*, session: Session, job_ids: Sequence[str]) -> dict[str, JobRow]:
    if not job_ids:
        return {}
    return {job.id: job for job in session.scalars(select(JobRow).where(JobRow.id.in_(job_ids)))}


def clear_ended_checkpoint(*, session: Session, job: JobRow) -> bool:
    """An ended job's checkpoint file is gone: its record keeps only where its last attempt resumed from."""
    done = session.execute(
        update(JobRow)
        .where(JobRow.id == job.id, JobRow.status.in_(FINISHED_STATUSES))
        .values(checkpoint=_ended(resumed_from_epoch(job.checkpoint)))
    )
    return changed(done)


def record_mlflow(*, session: Session, job_id: str, values: dict[str, Any]) -> None:
    """Merge ``values`` into the job's MLflow record (its run, or the last error MLflow answered)."""
    job = session.get(JobRow, job_id)
    if job is not None:
        job.mlflow = {**(job.mlflow or {}), **values}


def record_execution(*, session: Session, job_id: str, worker_id: str, attempt: int, execution: dict[str, Any]) -> bool:
    """Note how this attempt's training runs (its ``keras_build.Execution``); False if the job is no longer its."""
    return changed(
        session.execute(update(JobRow).where(*_holds(job_id, worker_id, attempt)).values(execution=execution))
    )


def complete_job(
    *,
    session: Session,
    job_id: str,
    worker_id: str,
    attempt: int,
    model: ModelRow,
    evaluation: dict[str, float | None] | None,
    training: dict[str, Any] | None = None,
    resumed_from_epoch: int | None = None,
) -> bool:
    """running → succeeded and the model published, in one transaction. False if the job is no longer this
    worker's to finish (cancelled, or taken over after its lease ran out). The job's checkpoint record keeps only
    where this attempt resumed from: the worker removes the file once this has committed."""
    done = session.execute(
        update(JobRow)
        .where(*_holds(job_id, worker_id, attempt), JobRow.cancel_requested.is_(False))
        .values(
            status=JobStatus.SUCCEEDED,
            finished_at=utcnow(),
            model_id=model.id,
            evaluation=evaluation,
            training=training,
            lease_expires_at=None,
            checkpoint=_ended(resumed_from_epoch),
        )
    )
    if not changed(done):
        # A retry of this very call, whose commit's answer was lost, finds its own result.
        return _ended_by(session, job_id, worker_id, attempt, JobStatus.SUCCEEDED, JobRow.model_id == model.id)
    registry.add_version(session=session, model=model)
    return True


def _ended_by(
    session: Session, job_id: str, worker_id: str, attempt: int, status: JobStatus, *also: ColumnElement[bool]
) -> bool:
    """Whether this attempt has already ended the job with ``status``: what a retried write (``db.retried``) of
    one that did commit finds. A worker cut off finds another attempt's result, or none."""
    ended = select(func.count()).where(
        JobRow.id == job_id, JobRow.status == status, JobRow.worker_id == worker_id, JobRow.attempts == attempt, *also
    )
    return session.scalar(ended) == 1


def still_holds(*, session: Session, job_id: str, worker_id: str, attempt: int) -> bool:
    """Whether this attempt still runs the job (else another worker took it over)."""
    return session.scalar(select(func.count()).select_from(JobRow).where(*_holds(job_id, worker_id, attempt))) == 1


def fail_job(
    *,
    session: Session,
    job_id: str,
    worker_id: str,
    attempt: int,
    error_type: str,
    message: str,
    resumed_from_epoch: int | None = None,
) -> bool:
    """running → failed; False if the job is no longer this attempt's. Its checkpoint record keeps only where
    this attempt resumed from."""
    done = session.execute(
        update(JobRow)
        .where(*_holds(job_id, worker_id, attempt))
        .values(
            status=JobStatus.FAILED,
            finished_at=utcnow(),
            error_type=error_type,
            error_message=message,
            lease_expires_at=None,
            checkpoint=_ended(resumed_from_epoch),
        )
    )
    return changed(done) or _ended_by(session, job_id, worker_id, attempt, JobStatus.FAILED)


def finish_cancelled(
    *, session: Session, job_id: str, worker_id: str, attempt: int, resumed_from_epoch: int | None = None
) -> bool:
    """A running job whose cancel was requested stops: running → cancelled. Its checkpoint record keeps only
    where this attempt resumed from."""
    done = session.execute(
        update(JobRow)
        .where(*_holds(job_id, worker_id, attempt))
        .values(
            status=JobStatus.CANCELLED,
            finished_at=utcnow(),
            lease_expires_at=None,
            checkpoint=_ended(resumed_from_epoch),
        )
    )
    return changed(done) or _ended_by(session, job_id, worker_id, attempt, JobStatus.CANCELLED)


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"  # it was queued (or already cancelled): nothing will run
    REQUESTED = "requested"  # it is running: the worker stops at its next batch
    FINISHED = "finished"  # it had already succeeded or failed
    MISSING = "missing"


def request_cancel(*, session: Session, job_id: str) -> CancelOutcome:
    """Cancel a job; asking again is harmless."""
    for _ in range(3):  # the job may change state between the read and the write; each write is a CAS
        job = session.get(JobRow, job_id, populate_existing=True)
        if job is None:
            return CancelOutcome.MISSING
        if job.status == JobStatus.CANCELLED:
            return CancelOutcome.CANCELLED
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            return CancelOutcome.FINISHED
        if job.status == JobStatus.QUEUED:
            done = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELLED, finished_at=utcnow(), cancel_requested=True)
            )
            if changed(done):
                return CancelOutcome.CANCELLED
        else:
            done = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.RUNNING)
                .values(cancel_requested=True)
            )
            if changed(done):
                return CancelOutcome.REQUESTED
    raise RuntimeError(f"job {job_id} kept changing state while being cancelled")


def mark_dispatched(*, session: Session, job_id: str) -> None:
    session.execute(update(JobRow).where(JobRow.id == job_id).values(dispatched_at=utcnow()))


def orphaned_jobs(*, session: Session, now: datetime) -> Sequence[JobRow]:
    """Running jobs whose lease has run out: their worker died or lost touch."""
    return session.scalars(
        select(JobRow).where(JobRow.status == JobStatus.RUNNING, JobRow.lease_expires_at < now)
    ).all()


def release_orphan(*, session: Session, job: JobRow, max_attempts: int) -> JobStatus | None:
    """An orphaned running job goes back to `queued` (to be sent again), or to `failed` once its attempts are
    spent, or to `cancelled` if that was asked. One compare-and-set: of several reconcilers, one wins."""
    if job.cancel_requested:
        target, values = JobStatus.CANCELLED, {}
    elif job.attempts >= max_attempts:
        target = JobStatus.FAILED
        values = {"error_type": "WorkerLost", "error_message": worker_lost_message(job.attempts)}
    else:
        target, values = JobStatus.QUEUED, {}
    finished = {"finished_at": utcnow()} if target != JobStatus.QUEUED else {}
    done = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job.id,
            JobRow.status == JobStatus.RUNNING,
            JobRow.worker_id == job.worker_id,
            JobRow.attempts == job.attempts,
            JobRow.lease_expires_at == job.lease_expires_at,
        )
        .values(status=target, lease_expires_at=None, **values, **finished)
    )
    return target if changed(done) else None


def undispatched_jobs(*, session: Session, sent_before: datetime, limit: int) -> Sequence[JobRow]:
    """Queued jobs whose message was sent (or should have been) before ``sent_before``, oldest first."""
    sent = func.coalesce(JobRow.dispatched_at, JobRow.created_at)
    query = select(JobRow).where(JobRow.status == JobStatus.QUEUED, sent < sent_before).order_by(sent).limit(limit)
    return session.scalars(query).all()


def claim_redispatch(*, session: Session, job: JobRow) -> bool:
    """Take the right to send a queued job's message again (CAS on when it was last sent)."""
    done = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job.id,
            JobRow.status == JobStatus.QUEUED,
            JobRow.dispatched_at.is_(None) if job.dispatched_at is None else JobRow.dispatched_at == job.dispatched_at,
        )
        .values(dispatched_at=utcnow())
    )
    return changed(done)
