"""What every Server-Sent Events route shares: a place under the stream limits, the event's wire form, and the
response that releases its place however it ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from service.api.errors import ApiError, responses
from service.api.job_watch import JobWatch, Slot, StreamLimitError
from service.api.middleware import client_of

# The routes' `responses=`: the stream itself, and its refusals.
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(404, 429),
    200: {"content": {"text/event-stream": {}}, "description": "An event stream."},
}


def reserve(request: Request) -> Slot:
    """A place for one more stream of this client (by API key, else address), or a 429."""
    watch: JobWatch = request.app.state.job_watch
    try:
        return watch.reserve(client_of(request.scope))
    except StreamLimitError as exc:
        raise ApiError(429, "too_many_streams", exc.message, headers={"Retry-After": "5"}) from exc


def event(kind: str, event_id: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}\nevent: {kind}\ndata: {payload}\n\n".encode()


def respond(stream: AsyncIterator[bytes], slot: Slot) -> StreamingResponse:
    """The stream as a response. Its slot is released when the stream ends, and also when the response ends before
    the stream ever started."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        stream, media_type="text/event-stream", headers=headers, background=BackgroundTask(slot.release)
    )
