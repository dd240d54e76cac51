"""Experiments: submit a search over a train request's fields, follow its trials, compare them, cancel it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service import experiments, jobs
from service.api import sse
from service.api.deps import Limit, Offset, QueueDep, SessionDep, SettingsDep
from service.api.errors import invalid_body, item, not_found, parse_json_body, responses, validation_error
from service.api.experiment_schemas import Curve, Curves, ExperimentCreated, ExperimentList, ExperimentRead, trial_state
from service.api.params import ExperimentId, IdempotencyKey
from service.api.routers.jobs import EPOCH_ROW_BYTES
from service.db import ExperimentRow, ExperimentStatus, session_scope
from service.examples import experiment_openapi_examples
from service.spec.experiment import ExperimentRequest

router = APIRouter(prefix="/experiments", tags=["experiments"])

POLL_SECONDS = 0.5

EXPERIMENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ExperimentRequest"},
                "examples": experiment_openapi_examples(),
            }
        },
    }
}


def _read(session: Session, row: ExperimentRow, with_trials: bool = True) -> ExperimentRead:
    trials = experiments.trial_jobs(session, row.id)
    history = experiments.trial_histories(session, ExperimentRequest.model_validate(row.spec), trials)
    read = ExperimentRead.from_row(row, trials, history)
    if not with_trials:
        read.trials = None
    return read


@router.post(
    "",
    status_code=202,
    response_model=ExperimentCreated,
    responses=responses(409, 413, 422, 503),
    summary="Start an experiment",
    openapi_extra=EXPERIMENT_BODY,
)
async def create_experiment(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKey = None,
) -> ExperimentCreated:
    """Validate the experiment, dry-build its trials (every one of a small space; the base and each trial before
    it is queued otherwise), record its Optuna study and queue its first `max_parallel` trials as jobs. A space
    that can make an invalid model is a 422 naming the space path and the values."""
    body = parse_json_body(await request.body())
    try:
        spec = ExperimentRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc, body) from exc
    created = await run_in_threadpool(
        partial(
            experiments.create_experiment,
            spec,
            session=session,
            settings=settings,
            queue=queue,
            idempotency_key=idempotency_key,
        )
    )
    response.headers["Location"] = f"/experiments/{created.experiment_id}"
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return ExperimentCreated(
        experiment_id=created.experiment_id, status=created.status, trials=created.trials, checked=created.checked
    )


@router.get("", response_model=ExperimentList, responses=responses(422))
def list_experiments(
    session: SessionDep,
    status: Annotated[ExperimentStatus | None, Query(description="Only experiments in this status.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ExperimentList:
    """Experiments, newest first, each with its counts of trials by state and its best trial (not the trials)."""
    rows, count = experiments.list_experiments(session=session, status=status, limit=limit, offset=offset)
    return ExperimentList(data=[_read(session, row, with_trials=False) for row in rows], count=count)


@router.get("/{experiment_id}", response_model=ExperimentRead, responses=responses(404))
def get_experiment(experiment_id: ExperimentId, session: SessionDep) -> ExperimentRead:
    """The experiment, its best trial so far, and every trial: parameters, state, objective and progress."""
    row = session.get(ExperimentRow, experiment_id)
    if row is None:
        raise not_found("experiment", experiment_id)
    return _read(session, row)


@router.get("/{experiment_id}/curves", response_model=Curves, responses=responses(404, 422))
def experiment_curves(
    experiment_id: ExperimentId,
    session: SessionDep,
    settings: SettingsDep,
    metric: Annotated[
        str, Query(min_length=1, max_length=100, description="What to draw: 'loss', 'val_accuracy', …")
    ] = "loss",
) -> Curves:
    """One metric of every trial, epoch by epoch: the curves to overlay (a pruned trial's ends where it was
    stopped). At most `TRAINSERVE_MAX_RESPONSE_BYTES` of epochs (422)."""
    row = session.get(ExperimentRow, experiment_id)
    if row is None:
        raise not_found("experiment", experiment_id)
    trials = experiments.trial_jobs(session, row.id)
    ids = [job.id for job in trials]
    if jobs.count_epochs(session=session, job_ids=ids) * EPOCH_ROW_BYTES > settings.max_response_bytes:
        raise validation_error([item(["path", "experiment_id"], "its trials have more epochs than one answer carries")])
    history = jobs.job_history(session=session, job_ids=ids)
    return Curves(
        metric=metric,
        trials=[
            Curve(
                number=job.trial_number or 0,
                job_id=job.id,
                state=trial_state(job),
                epochs=[r["epoch"] for r in history[job.id]],
                values=[r.get(metric) for r in history[job.id]],
            )
            for job in trials
        ],
    )


@router.post("/{experiment_id}/cancel", response_model=ExperimentRead, responses=responses(404))
async def cancel_experiment(
    experiment_id: ExperimentId, session: SessionDep, settings: SettingsDep, queue: QueueDep
) -> ExperimentRead:
    """Ask no more trials, cancel the queued ones and stop the running ones at their next batch; the experiment
    is `cancelled` once none runs. Asking again is harmless; an ended experiment stays as it ended."""
    row = await run_in_threadpool(experiments.request_cancel, settings, queue, experiment_id)
    if row is None:
        raise not_found("experiment", experiment_id)
    session.expire_all()
    fresh = session.get(ExperimentRow, experiment_id)
    assert fresh is not None
    return _read(session, fresh)


def _snapshot(url: str, experiment_id: str) -> ExperimentRead | None:
    with session_scope(url) as session:
        row = session.get(ExperimentRow, experiment_id)
        return None if row is None else _read(session, row)


async def _stream(
    url: str, experiment_id: str, first: ExperimentRead, release: Any, heartbeat: float, max_seconds: float
) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 1000\n\n"
        sent: dict[int, dict[str, Any]] = {}
        summary: dict[str, Any] | None = None
        started = last_sent = time.monotonic()
        current: ExperimentRead | None = first
        sequence = 0
        while current is not None:
            for trial in current.trials or []:
                state = trial.model_dump(mode="json")
                if sent.get(trial.number) != state:
                    sent[trial.number] = state
                    sequence += 1
                    yield sse.event("trial", str(sequence), state)
                    last_sent = time.monotonic()
            state = current.model_dump(mode="json", exclude={"trials", "spec"})
            if state != summary:
                summary = state
                sequence += 1
                yield sse.event("experiment", str(sequence), state)
                last_sent = time.monotonic()
            if current.status != ExperimentStatus.RUNNING or time.monotonic() - started >= max_seconds:
                return
            await asyncio.sleep(POLL_SECONDS)
            if time.monotonic() - last_sent >= heartbeat:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            current = await run_in_threadpool(_snapshot, url, experiment_id)
    finally:
        release()


@router.get(
    "/{experiment_id}/events",
    response_class=StreamingResponse,
    responses=sse.STREAM_RESPONSES,
)
async def experiment_events(experiment_id: ExperimentId, request: Request, settings: SettingsDep) -> StreamingResponse:
    """Follow an experiment live: `event: trial` whenever a trial changes (state, progress, last epoch,
    objective), `event: experiment` whenever the experiment's status, counts or best trial change. Ends with the
    experiment. Counts against the same stream limits as the job streams."""
    slot = sse.reserve(request)
    try:
        first = await run_in_threadpool(_snapshot, settings.database_url, experiment_id)
    except BaseException:
        slot.release()
        raise
    if first is None:
        slot.release()
        raise not_found("experiment", experiment_id)
    stream = _stream(
        settings.database_url,
        experiment_id,
        first,
        slot.release,
        settings.sse_heartbeat,
        settings.event_stream_max_seconds,
    )
    return sse.respond(stream, slot)
