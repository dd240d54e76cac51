"""POST /train: validate, dry-build, record the job, queue it."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import jobs, uploads
from service.api import links
from service.api.deps import QueueDep, SessionDep, SettingsDep
from service.api.errors import ApiError, invalid_body, item, parse_json_body, responses, validation_error
from service.api.schemas import JobCreated
from service.db import JobRow, JobStatus
from service.examples import openapi_examples
from service.queue import JobQueue
from service.settings import Settings
from service.spec import TrainRequest

if TYPE_CHECKING:
    from service.keras_build import DryBuild

router = APIRouter(tags=["training"])
log = logging.getLogger(__name__)


def _dry_build(request: TrainRequest, session: SessionDep, settings: Settings) -> DryBuild:
    from service.keras_build import MemoryLimits, SpecError, dry_build

    memory = MemoryLimits(
        max_activation_bytes=settings.max_activation_bytes, max_training_data_bytes=settings.max_training_data_bytes
    )
    try:
        info = uploads.dataset_info(session=session, spec=request.dataset)
        return dry_build(request, info, max_params=settings.max_model_params, memory=memory)
    except (SpecError, uploads.UnknownDatasetError) as exc:
        raise validation_error([item(path, message) for path, message in exc.problems]) from exc


def _check_size(request: TrainRequest, settings: Settings) -> None:
    problems = []
    if request.fit.epochs > settings.max_epochs:
        problems.append(
            item(
                ["fit", "epochs"],
                f"{request.fit.epochs} epochs is more than this service allows: at most {settings.max_epochs} "
                f"(TRAINSERVE_MAX_EPOCHS)",
            )
        )
    if len(request.model.layers) > settings.max_layers:
        problems.append(
            item(
                ["model", "layers"],
                f"{len(request.model.layers)} layers is more than this service allows: at most "
                f"{settings.max_layers} (TRAINSERVE_MAX_LAYERS)",
            )
        )
    if problems:
        raise validation_error(problems)


def _request_hash(request: TrainRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: JobRow, request_sha256: str, key: str, response: Response) -> JobCreated:
    """The answer to a repeated Idempotency-Key: the first job, if the request is the same."""
    if job.request_sha256 != request_sha256:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was already used with a different request (job {job.id})",
        )
    response.headers["Location"] = f"/jobs/{job.id}"
    response.headers["Idempotent-Replayed"] = "true"
    return JobCreated(job_id=job.id, status=JobStatus(job.status))


TRAIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/TrainRequest"},
                "examples": openapi_examples(),
            }
        },
    }
}


@router.post(
    "/train",
    status_code=202,
    response_model=JobCreated,
    responses={
        **responses(409, 413, 422, 503),
        202: {"model": JobCreated, "links": links.of_job("/job_id")},
    },
    summary="Queue a training job",
    openapi_extra=TRAIN_BODY,
)
async def train(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Send the same key again (after a timeout, say) to get the first job instead of a second.",
        ),
    ] = None,
) -> JobCreated:
    """Validate the spec, build the model once without training it (so shape errors are a 422 now, not a failed
    job later), record the job and queue it. Poll `Location` (`GET /jobs/{job_id}`) for progress."""
    body = parse_json_body(await request.body())
    try:
        spec = TrainRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc, body) from exc
    return await run_in_threadpool(_submit, spec, response, session, settings, queue, idempotency_key)


def _submit(
    request: TrainRequest,
    response: Response,
    session: Session,
    settings: Settings,
    queue: JobQueue,
    idempotency_key: str | None,
) -> JobCreated:
    request_sha256 = _request_hash(request)
    if idempotency_key is not None:
        earlier = jobs.get_job_by_idempotency_key(session=session, key=idempotency_key)
        if earlier is not None:
            return _replay(earlier, request_sha256, idempotency_key, response)
    _check_size(request, settings)
    _dry_build(request, session, settings)
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
        return _replay(earlier, request_sha256, idempotency_key or "", response)
    try:
        queue.send(job.id)
    except Exception as exc:
        # Not queued means not accepted: remove the record rather than leave a job nobody will run.
        log.error("could not queue job %s: %s", job.id, exc)
        session.delete(job)
        session.commit()
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; try again shortly") from exc
    jobs.mark_dispatched(session=session, job_id=job.id)
    session.commit()
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobCreated(job_id=job.id, status=JobStatus.QUEUED)
