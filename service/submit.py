"""Accepting a training job: check it against the service's limits, build it once without training (so a shape
error is an answer now, not a failed job later), record it and queue it — or hand back the job an earlier request
with the same Idempotency-Key made.

No HTTP here: each refusal is its own exception, and the API says which status each one answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import jobs
from service.datasets import catalogue
from service.db import JobRow, JobStatus
from service.queue import JobQueue
from service.settings import Settings
from service.spec import TrainRequest

if TYPE_CHECKING:
    from service.keras_build import DryBuild

log = logging.getLogger(__name__)

Loc = tuple[str | int, ...]


class SubmitError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(SubmitError):
    """The spec is over a limit, cannot be built, or does not fit its dataset; each problem with its JSON path."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__(problems[0][1] if len(problems) == 1 else f"{len(problems)} problems in the request")
        self.problems = problems


class IdempotencyConflictError(SubmitError):
    """The Idempotency-Key was used before, with a different request."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request (job {job_id})")
        self.key = key
        self.job_id = job_id


class QueueUnavailableError(SubmitError):
    """The broker did not take the job, so nothing was recorded."""


@dataclass(frozen=True)
class Submitted:
    job_id: str
    status: JobStatus
    # True when the job is the one an earlier request with the same Idempotency-Key made.
    replayed: bool = False
    # What building the model once found; None for a replay.
    build: DryBuild | None = None


def request_hash(request: TrainRequest) -> str:
    """What an Idempotency-Key is checked against: the request as validated, in a canonical form."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_limits(request: TrainRequest, settings: Settings) -> None:
    problems: list[tuple[Loc, str]] = []
    if request.fit.epochs > settings.max_epochs:
        problems.append(
            (
                ("fit", "epochs"),
                f"{request.fit.epochs} epochs is more than this service allows: at most {settings.max_epochs} "
                f"(TRAINSERVE_MAX_EPOCHS)",
            )
        )
    if len(request.model.layers) > settings.max_layers:
        problems.append(
            (
                ("model", "layers"),
                f"{len(request.model.layers)} layers is more than this service allows: at most "
                f"{settings.max_layers} (TRAINSERVE_MAX_LAYERS)",
            )
        )
    if problems:
        raise InvalidRequestError(problems)


def check_build(request: TrainRequest, session: Session, settings: Settings, *, summary: bool = False) -> DryBuild:
    """Build the model on its dataset's shapes without training it; refuse what Keras cannot build and what would
    need more parameters or memory than the service allows. With ``summary``, also what ``model.summary()`` says."""
    from service.keras_build import MemoryLimits, SpecError, dry_build

    memory = MemoryLimits(
        max_activation_bytes=settings.max_activation_bytes, max_training_data_bytes=settings.max_training_data_bytes
    )
    try:
        info = catalogue.dataset_info(session=session, spec=request.dataset)
        return dry_build(request, info, max_params=settings.max_model_params, memory=memory, summary=summary)
    except (SpecError, catalogue.UnknownDatasetError) as exc:
        raise InvalidRequestError([(tuple(loc), message) for loc, message in exc.problems]) from exc


def preview(request: TrainRequest, *, session: Session, settings: Settings) -> DryBuild:
    """What submitting ``request`` would find — the same limits and the same dry build — with the model's summary
    as the worker will record it, without recording or queueing anything (nor looking at an Idempotency-Key).
    Blocking: it builds a Keras model."""
    check_limits(request, settings)
    return check_build(request, session, settings, summary=True)


def _replay(job: JobRow, request_sha256: str, key: str) -> Submitted:
    if job.request_sha256 != request_sha256:
        raise IdempotencyConflictError(key, job.id)
    return Submitted(job_id=job.id, status=JobStatus(job.status), replayed=True)


def submit(
    request: TrainRequest,
    *,
    session: Session,
    settings: Settings,
    queue: JobQueue,
    idempotency_key: str | None = None,
) -> Submitted:
    """Record and queue a job for ``request``, or return the one its Idempotency-Key already made. Blocking: it
    builds a Keras model and talks to the database and the broker."""
    request_sha256 = request_hash(request)
    if idempotency_key is not None:
        earlier = jobs.get_job_by_idempotency_key(session=session, key=idempotency_key)
        if earlier is not None:
            return _replay(earlier, request_sha256, idempotency_key)
    check_limits(request, settings)
    build = check_build(request, session, settings)
    job = jobs.create_job(
        session=session, request=request, idempotency_key=idempotency_key, request_sha256=request_sha256
    )
    try:
        session.commit()
    except IntegrityError:
        # The same Idempotency-Key arrived twice at once and the other request recorded its job first.
        session.rollback()
        earlier = jobs.get_job_by_idempotency_key(session=session, key=idempotency_key or "")
        if earlier is None:
            raise
        return _replay(earlier, request_sha256, idempotency_key or "")
    try:
        queue.send(job.id, job.pool)
    except Exception as exc:
        # Not queued means not accepted: remove the record rather than leave a job nobody will run.
        log.error("could not queue job %s: %s", job.id, exc)
        session.delete(job)
        session.commit()
        raise QueueUnavailableError("the job queue is unreachable; try again shortly") from exc
    jobs.mark_dispatched(session=session, job_id=job.id)
    session.commit()
    return Submitted(job_id=job.id, status=JobStatus.QUEUED, build=build)
