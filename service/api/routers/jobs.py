"""Jobs: status, progress and per-epoch history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from service import jobs, script, tensorboard
from service.api import links
from service.api.deps import Limit, Offset, QueueDep, SessionDep, SettingsDep
from service.api.errors import ApiError, item, not_found, responses, validation_error
from service.api.params import JobId
from service.api.schemas import JobList, JobRead
from service.datasets import catalogue
from service.datasets.builtin import BUILTIN_DATASETS
from service.db import JobRow, JobStatus
from service.queue import JobQueue
from service.settings import DEFAULT_POOL
from service.spec import TrainRequest
from service.store import model_store

router = APIRouter(prefix="/jobs", tags=["jobs"])


# What one epoch's row takes in an answer, at most as this service writes them (loss, ten metrics, their val_*).
EPOCH_ROW_BYTES = 600


@router.get("", response_model=JobList, responses=responses(422))
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    history: Annotated[
        Literal["all", "last"],
        Query(description="Each job's whole history, or only its last epoch (what a list shows)."),
    ] = "all",
) -> JobList:
    """Jobs, newest first. With `history=all` a page may carry at most `TRAINSERVE_MAX_RESPONSE_BYTES` of epochs
    (422 naming the `limit` that fits)."""
    rows, count = jobs.list_jobs(session=session, status=status, limit=limit, offset=offset)
    ids = [row.id for row in rows]
    if history == "last":
        histories = jobs.last_epochs(session=session, job_ids=ids)
    else:
        epochs = jobs.count_epochs(session=session, job_ids=ids)
        if epochs * EPOCH_ROW_BYTES > settings.max_response_bytes:
            fits = max(1, len(ids) * settings.max_response_bytes // (epochs * EPOCH_ROW_BYTES))
            raise validation_error(
                [
                    item(
                        ["query", "limit"],
                        f"these {len(ids)} jobs have {epochs:,} epochs of history, more than one answer carries "
                        f"(TRAINSERVE_MAX_RESPONSE_BYTES); ask for limit={fits}, or history=last",
                    )
                ]
            )
        histories = jobs.job_history(session=session, job_ids=ids)
    waiting = _unschedulable(queue, rows)
    return JobList(data=[JobRead.from_row(row, histories[row.id], waiting) for row in rows], count=count)


def _unschedulable(queue: JobQueue, rows: Sequence[JobRow]) -> dict[str, str]:
    """The pools of these jobs that no worker takes now: asked of the broker only for queued jobs."""
    pools = {row.pool or DEFAULT_POOL for row in rows if row.status == JobStatus.QUEUED}
    return queue.unschedulable(pools) if pools else {}


@router.get(
    "/{job_id}",
    response_model=JobRead,
    responses={**responses(404), 200: {"links": links.of_model("/model_id", "/name")}},
)
def get_job(job_id: JobId, session: SessionDep, queue: QueueDep) -> JobRead:
    job = jobs.get_job(session=session, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    history = jobs.job_history(session=session, job_ids=[job.id])
    return JobRead.from_row(job, history[job.id], _unschedulable(queue, [job]))


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses={**responses(404, 409), 202: {"model": JobRead, "description": "Running: it stops at its next batch."}},
)
def cancel_job(job_id: JobId, session: SessionDep, response: Response) -> JobRead:
    """Cancel a job. A queued job is `cancelled` at once (200). A running one stops at its next batch and
    publishes no model (202; poll the job). Cancelling again is harmless; a finished job is a 409."""
    outcome = jobs.request_cancel(session=session, job_id=job_id)
    session.commit()
    if outcome is jobs.CancelOutcome.MISSING:
        raise not_found("job", job_id)
    job = jobs.get_job(session=session, job_id=job_id)
    assert job is not None
    if outcome is jobs.CancelOutcome.FINISHED:
        raise ApiError(409, "job_finished", f"job {job_id} has already {job.status}; there is nothing to cancel")
    if outcome is jobs.CancelOutcome.REQUESTED:
        response.status_code = 202
    history = jobs.job_history(session=session, job_ids=[job.id])
    return JobRead.from_row(job, history[job.id])


PYTHON = "text/x-python; charset=utf-8"


def attachment(name: str, suffix: str) -> str:
    """A Content-Disposition for a file called ``name + suffix``: the name as it is when it is plain ASCII, else
    in RFC 6266's UTF-8 form beside an ASCII stand-in."""
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    header = f'attachment; filename="{plain}{suffix}"'
    if plain != name:
        header += f"; filename*=UTF-8''{quote(name + suffix, safe='')}"
    return header


@router.get(
    "/{job_id}/script",
    response_class=Response,
    responses={**responses(404), 200: {"content": {"text/x-python": {}}, "description": "A Python file."}},
)
def get_script(job_id: JobId, session: SessionDep, request: Request) -> Response:
    """The job as a plain Keras script, the code a learner would write for it: the same data and splits, model,
    compile and fit options, in the order the worker runs them. Seeded, it gives the job's numbers. An uploaded
    dataset is read from a `dataset.npz` beside it, which its first lines say how to download."""
    job = jobs.get_job(session=session, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    spec = TrainRequest.model_validate(job.spec)
    if spec.dataset.name is not None:
        test_split = BUILTIN_DATASETS[spec.dataset.name].test_rows > 0
    else:
        assert spec.dataset.id is not None
        row = catalogue.get_dataset(session=session, dataset_id=spec.dataset.id)
        # A deleted upload: it had a test split if the job evaluated one it did not hold out itself.
        own = job.evaluation is not None and spec.dataset.test_size is None
        test_split = "test" in row.splits if row is not None else own
    text = script.render(
        spec,
        execution=job.execution,
        dataset_url=str(request.base_url).rstrip("/"),
        job_id=job.id,
        test_split=test_split,
    )
    return Response(text, media_type=PYTHON, headers={"Content-Disposition": attachment(job.name or job.id, ".py")})


@router.get(
    "/{job_id}/tensorboard",
    response_class=Response,
    responses={**responses(404, 409), 200: {"content": {"application/x-tar": {}}, "description": "A tar."}},
)
def get_tensorboard(job_id: JobId, session: SessionDep, settings: SettingsDep) -> Response:
    """The job's TensorBoard event files as a tar, laid out as Keras' `TensorBoard` callback writes them:
    `<job_id>/train/` and `<job_id>/validation/`, each epoch's loss, metrics and learning rate (step: the epoch
    less one) and weight histograms when the request asked for them (`fit.tensorboard.histogram_freq`). Untar it
    and run `tensorboard --logdir .`. A running job's logs so far; 409 for a job that has none yet."""
    job = jobs.get_job(session=session, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    store = model_store(settings)
    files = tensorboard.served_files(store, job.id, job.attempts)
    if not files:
        if job.status == JobStatus.QUEUED:
            why = "it is queued; its logs begin when its first epoch ends"
        elif job.status == JobStatus.RUNNING:
            why = "its first epoch has not ended yet"
        else:
            why = f"it {job.status} before the end of its first epoch (or was trained before jobs wrote logs)"
        raise ApiError(409, "no_tensorboard_logs", f"job {job.id} has no TensorBoard logs yet: {why}")
    headers = {"Content-Disposition": f'attachment; filename="{job.id}-tensorboard.tar"'}
    return StreamingResponse(tensorboard.archive(store, files, job.id), media_type="application/x-tar", headers=headers)
