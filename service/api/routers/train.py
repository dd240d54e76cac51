"""POST /train: parse and validate the spec, then hand it to ``service.submit``."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.api import links
from service.api.deps import QueueDep, SessionDep, SettingsDep
from service.api.errors import invalid_body, parse_json_body, responses
from service.api.params import IdempotencyKey
from service.api.schemas import BuildEstimate, JobCreated
from service.examples import openapi_examples
from service.spec import TrainRequest
from service.submit import submit

router = APIRouter(tags=["training"])


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
    idempotency_key: IdempotencyKey = None,
) -> JobCreated:
    """Validate the spec, build the model once without training it (so shape errors are a 422 now, not a failed
    job later), record the job and queue it. Poll `Location` (`GET /jobs/{job_id}`) for progress."""
    body = parse_json_body(await request.body())
    try:
        spec = TrainRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc, body) from exc
    submitted = await run_in_threadpool(
        partial(submit, spec, session=session, settings=settings, queue=queue, idempotency_key=idempotency_key)
    )
    response.headers["Location"] = f"/jobs/{submitted.job_id}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    build = submitted.build
    estimate = None
    if build is not None:
        estimate = BuildEstimate(
            total_params=build.total_params,
            output_shape=list(build.output_shape),
            activation_bytes=build.activation_bytes,
            training_data_bytes=build.data_bytes,
        )
    return JobCreated(job_id=submitted.job_id, status=submitted.status, build=estimate)
