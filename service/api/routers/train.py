"""POST /train: parse and validate the spec, then hand it to ``service.submit`` — or, with ``dry_run=true``, only
preview what submitting it would find."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.api import links
from service.api.deps import QueueDep, SessionDep, SettingsDep
from service.api.errors import invalid_body, parse_json_body, responses
from service.api.params import IdempotencyKey
from service.api.schemas import BuildEstimate, JobCreated, SpecPreview
from service.examples import openapi_examples
from service.spec import TrainRequest
from service.submit import preview, submit

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

DryRun = Annotated[
    bool,
    Query(
        description="`true`: check the request as a submit does (limits, the model built against the dataset's "
        "shapes) and answer 200 with the model's summary and the build's findings, without recording or queueing "
        "anything; an Idempotency-Key is not looked at. Problems are the same 422."
    ),
]


@router.post(
    "/train",
    status_code=202,
    response_model=JobCreated,
    responses={
        **responses(409, 413, 422, 503),
        200: {"model": SpecPreview, "description": "With `dry_run=true`: what the model is, nothing queued."},
        202: {"model": JobCreated, "links": links.of_job("/job_id")},
    },
    summary="Queue a training job, or preview it",
    openapi_extra=TRAIN_BODY,
)
async def train(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKey = None,
    dry_run: DryRun = False,
) -> JobCreated | Response:
    """Validate the spec, build the model once without training it (so shape errors are a 422 now, not a failed
    job later), record the job and queue it. Poll `Location` (`GET /jobs/{job_id}`) for progress.

    With `dry_run=true`, stop after the checks and answer what they found: the model's summary as
    `GET /models/{model_id}/summary` will answer it once trained (its layers, parameters and the text
    `model.summary()` prints) and the build's findings."""
    body = parse_json_body(await request.body())
    try:
        spec = TrainRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc, body) from exc
    if dry_run:
        found = await run_in_threadpool(partial(preview, spec, session=session, settings=settings))
        return Response(SpecPreview.from_build(found).model_dump_json(), 200, media_type="application/json")
    submitted = await run_in_threadpool(
        partial(submit, spec, session=session, settings=settings, queue=queue, idempotency_key=idempotency_key)
    )
    response.headers["Location"] = f"/jobs/{submitted.job_id}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    build = None if submitted.build is None else BuildEstimate.from_build(submitted.build)
    return JobCreated(job_id=submitted.job_id, status=submitted.status, build=build)
