"""POST /train: validate, dry-build, record the job, queue it."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Response

from service import jobs, uploads
from service.api.deps import CeleryDep, SessionDep
from service.api.errors import ApiError, item, responses, validation_error
from service.api.schemas import JobCreated
from service.db import JobStatus
from service.examples import openapi_examples
from service.spec import TrainRequest
from worker.celery_app import TRAIN_TASK

router = APIRouter(tags=["training"])
log = logging.getLogger(__name__)


def _dry_build(request: TrainRequest, session: SessionDep) -> None:
    from service.keras_build import SpecError, dry_build

    try:
        dry_build(request, uploads.dataset_info(session=session, spec=request.dataset))
    except (SpecError, uploads.UnknownDatasetError) as exc:
        raise validation_error([item(path, message) for path, message in exc.problems]) from exc


@router.post(
    "/train",
    status_code=202,
    response_model=JobCreated,
    responses=responses(422, 503),
    summary="Queue a training job",
)
def train(
    request: Annotated[TrainRequest, Body(openapi_examples=openapi_examples())],
    response: Response,
    session: SessionDep,
    celery: CeleryDep,
) -> JobCreated:
    """Validate the spec, build the model once without training it (so shape errors are a 422 now, not a failed
    job later), record the job and queue it. Poll `Location` (`GET /jobs/{job_id}`) for progress."""
    _dry_build(request, session)
    job = jobs.create_job(session=session, request=request)
    session.commit()
    try:
        celery.send_task(TRAIN_TASK, args=[job.id], task_id=job.id)
    except Exception as exc:
        # Not queued means not accepted: remove the record rather than leave a job nobody will run.
        log.error("could not queue job %s: %s", job.id, exc)
        session.delete(job)
        session.commit()
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; try again shortly") from exc
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobCreated(job_id=job.id, status=JobStatus.QUEUED)
