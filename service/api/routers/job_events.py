"""GET /jobs/{job_id}/events: a job's progress as Server-Sent Events.

One `status` event per status change and one `epoch` event per finished epoch, read from the database (the source
of truth, whichever worker runs the job) by one poll shared by every stream (``job_watch``). Each event id is
`<attempt>.<epoch>`, so a client that reconnects with `Last-Event-ID` gets the current status and only the epochs
it has not seen; a job taken over goes on under a new attempt number after its last checkpoint, and its epochs
after that checkpoint (trained again) are sent again. Comment lines keep idle connections open; the stream ends
with the job, or after `TRAINSERVE_EVENT_STREAM_MAX_SECONDS`, when the client reconnects and goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from service.api import sse
from service.api.deps import SettingsDep
from service.api.errors import not_found
from service.api.job_watch import JobWatch, Slot, Snapshot
from service.api.params import JobId
from service.db import FINISHED_STATUSES, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _parse_last_event_id(value: str | None) -> tuple[int, int]:
    """(attempt, epoch) already seen; (0, 0) when nothing was."""
    try:
        attempt, _, epoch = (value or "").partition(".")
        return int(attempt), int(epoch)
    except ValueError:
        return 0, 0


async def _stream(
    watch: JobWatch,
    slot: Slot,
    job_id: str,
    first: Snapshot,
    seen: tuple[int, int],
    heartbeat: float,
    max_seconds: float,
) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 1000\n\n"
        attempt, epoch = seen
        status: str | None = None
        started = last_sent = time.monotonic()
        with watch.follow(job_id, first) as watched:
            while True:
                version, snapshot = watched.version, watched.snapshot
                if snapshot.attempt != attempt:
                    # A new attempt goes on after its checkpoint (or from the first epoch without one): the epochs
                    # up to there are those already seen; any after them are trained, and sent, again.
                    attempt, epoch = snapshot.attempt, min(epoch, snapshot.resumed_from)
                for row in snapshot.history:
                    if row["epoch"] > epoch:
                        epoch = row["epoch"]
                        yield sse.event("epoch", f"{attempt}.{epoch}", {"attempt": attempt, **row})
                        last_sent = time.monotonic()
                if snapshot.status != status:
                    status = snapshot.status
                    yield sse.event("status", f"{attempt}.{epoch}", snapshot.job)
                    last_sent = time.monotonic()
                if JobStatus(status) in FINISHED_STATUSES:
                    return
                now = time.monotonic()
                if now - started >= max_seconds:
                    return  # the client reconnects with Last-Event-ID and goes on
                if watched.version == version:
                    wait = min(heartbeat - (now - last_sent), max_seconds - (now - started))
                    try:
                        async with asyncio.timeout(max(0.0, wait)):
                            await watched.changed.wait()
                    except TimeoutError:
                        if time.monotonic() - last_sent >= heartbeat:
                            yield b": keep-alive\n\n"
                            last_sent = time.monotonic()
    finally:
        slot.release()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses=sse.STREAM_RESPONSES,
)
async def job_events(
    job_id: JobId,
    request: Request,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=50)] = None,
) -> StreamingResponse:
    """Follow a job live: `event: epoch` for every finished epoch (loss, metrics, val_*), `event: status` for each
    status change (the job's status, progress, model_id, error). Ends when the job ends (or after an hour: reconnect
    with `Last-Event-ID` to go on). A client may hold `TRAINSERVE_MAX_EVENT_STREAMS_PER_CLIENT` streams at once."""
    watch: JobWatch = request.app.state.job_watch
    slot = sse.reserve(request)
    try:
        first = await watch.first(job_id)
    except BaseException:
        slot.release()
        raise
    if first is None:
        slot.release()
        raise not_found("job", job_id)
    stream = _stream(
        watch,
        slot,
        job_id,
        first,
        _parse_last_event_id(last_event_id),
        settings.sse_heartbeat,
        settings.event_stream_max_seconds,
    )
    return sse.respond(stream, slot)
