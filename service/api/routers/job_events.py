"""GET /jobs/{job_id}/events: a job's progress as Server-Sent Events.

One `status` event per status change and one `epoch` event per finished epoch, read from the database (the source
of truth, whichever worker runs the job). Each event id is `<attempt>.<epoch>`, so a client that reconnects with
`Last-Event-ID` gets the current status and only the epochs it has not seen; a retried job starts its epochs
over under a new attempt number. Comment lines keep idle connections open; the stream ends with the job.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from service import jobs
from service.api.deps import SettingsDep
from service.api.errors import not_found, responses
from service.db import FINISHED_STATUSES, ID_PATTERN, JobRow, JobStatus, session_scope

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_SECONDS = 0.25


@dataclass
class Snapshot:
    job: dict[str, Any]
    attempt: int
    status: str
    history: list[dict[str, Any]]


def _snapshot(database_url: str, job_id: str) -> Snapshot | None:
    with session_scope(database_url) as session:
        row: JobRow | None = jobs.get_job(session=session, job_id=job_id)
        if row is None:
            return None
        history = jobs.job_history(session=session, job_ids=[job_id])[job_id]
        job = {
            "job_id": row.id,
            "status": row.status,
            "attempts": row.attempts,
            "progress": {"epoch": row.epoch, "epochs": row.epochs},
            "model_id": row.model_id,
            "error": {"type": row.error_type, "message": row.error_message} if row.error_type else None,
            "cancel_requested": row.cancel_requested,
        }
        return Snapshot(job=job, attempt=row.attempts, status=row.status, history=history)


def _parse_last_event_id(value: str | None) -> tuple[int, int]:
    """(attempt, epoch) already seen; (0, 0) when nothing was."""
    try:
        attempt, _, epoch = (value or "").partition(".")
        return int(attempt), int(epoch)
    except ValueError:
        return 0, 0


def _event(kind: str, event_id: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}\nevent: {kind}\ndata: {payload}\n\n".encode()


async def _stream(
    request: Request, database_url: str, job_id: str, first: Snapshot, seen: tuple[int, int], heartbeat: float
) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    attempt, epoch = seen
    status: str | None = None
    snapshot: Snapshot | None = first
    last_sent = time.monotonic()
    while snapshot is not None:
        if snapshot.attempt != attempt:
            attempt, epoch = snapshot.attempt, 0  # a new attempt trains from the first epoch again
        for row in snapshot.history:
            if row["epoch"] > epoch:
                epoch = row["epoch"]
                yield _event("epoch", f"{attempt}.{epoch}", {"attempt": attempt, **row})
                last_sent = time.monotonic()
        if snapshot.status != status:
            status = snapshot.status
            yield _event("status", f"{attempt}.{epoch}", snapshot.job)
            last_sent = time.monotonic()
        if JobStatus(status) in FINISHED_STATUSES or await request.is_disconnected():
            return
        if time.monotonic() - last_sent >= heartbeat:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)
        snapshot = await run_in_threadpool(_snapshot, database_url, job_id)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={**responses(404), 200: {"content": {"text/event-stream": {}}, "description": "An event stream."}},
)
async def job_events(
    job_id: Annotated[str, Path(description="Job id as returned by POST /train.", pattern=ID_PATTERN)],
    request: Request,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=50)] = None,
) -> StreamingResponse:
    """Follow a job live: `event: epoch` for every finished epoch (loss, metrics, val_*), `event: status` for each
    status change (the job's status, progress, model_id, error). Ends when the job ends; resumable with
    `Last-Event-ID`."""
    first = await run_in_threadpool(_snapshot, settings.database_url, job_id)
    if first is None:
        raise not_found("job", job_id)
    stream = _stream(
        request, settings.database_url, job_id, first, _parse_last_event_id(last_event_id), settings.sse_heartbeat
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
