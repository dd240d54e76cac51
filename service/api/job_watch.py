"""Everyone following jobs, served by one poll of the database.

However many event streams are open, and on however many jobs, the API reads the database once per tick: one
query for the state of every watched job, and the new epochs of those that changed. Each stream then waits for
its job to change (or for its next heartbeat), costing nothing in between. The number of streams is bounded, in
all and per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from service.db import EpochRow, JobRow, session_scope
from service.jobs import resumed_from_epoch

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25


@dataclass
class Snapshot:
    """A job as its followers see it: its state, and the epochs of its current attempt."""

    job: dict[str, Any]
    attempt: int
    status: str
    history: list[dict[str, Any]]
    # The epoch its attempt resumed after (its epochs up to there are the earlier attempt's, kept), else 0.
    resumed_from: int = 0


def _job_state(row: JobRow) -> dict[str, Any]:
    return {
        "job_id": row.id,
        "status": row.status,
        "attempts": row.attempts,
        "progress": {"epoch": row.epoch, "epochs": row.epochs},
        "model_id": row.model_id,
        "error": {"type": row.error_type, "message": row.error_message} if row.error_type else None,
        "cancel_requested": row.cancel_requested,
        "training": row.training,
        "resumed_from_epoch": resumed_from_epoch(row.checkpoint),
    }


def read_snapshots(database_url: str, known: dict[str, Snapshot | None]) -> dict[str, Snapshot]:
    """The current snapshot of each job in ``known`` that changed since its known one (or has none yet); jobs that
    no longer exist are left out. One query for the jobs, one for the new epochs of those that moved on."""
    changed: dict[str, Snapshot] = {}
    with session_scope(database_url) as session:
        rows = session.scalars(select(JobRow).where(JobRow.id.in_(list(known)))).all()
        fresh: list[tuple[JobRow, Snapshot | None]] = []
        for row in rows:
            before = known[row.id]
            state = _job_state(row)
            if before is not None and before.job == state:
                continue
            fresh.append((row, before if before is not None and before.attempt == row.attempts else None))
        for row, before in fresh:
            seen = before.history[-1]["epoch"] if before is not None and before.history else 0
            epochs = session.scalars(
                select(EpochRow).where(EpochRow.job_id == row.id, EpochRow.epoch > seen).order_by(EpochRow.epoch)
            ).all()
            history = (before.history if before is not None else []) + [{"epoch": e.epoch, **e.metrics} for e in epochs]
            state = _job_state(row)
            changed[row.id] = Snapshot(state, row.attempts, row.status, history, state["resumed_from_epoch"] or 0)
    return changed


@dataclass
class _Watched:
    snapshot: Snapshot
    followers: int = 0
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class StreamLimitError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Slot:
    """One open stream's place under the limits; released once, however the stream ends."""

    def __init__(self, watch: JobWatch, client: str) -> None:
        self.watch = watch
        self.client = client
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.watch.release_stream(self.client)


class JobWatch:
    def __init__(self, database_url: str, *, max_streams: int, max_per_client: int) -> None:
        self.database_url = database_url
        self.max_streams = max_streams
        self.max_per_client = max_per_client
        self._watched: dict[str, _Watched] = {}
        self._streams: Counter[str] = Counter()
        self._poller: asyncio.Task[None] | None = None
        self.polls = 0

    @property
    def open_streams(self) -> int:
        return sum(self._streams.values())

    def reserve(self, client: str) -> Slot:
        """A place for one more stream of ``client``, or StreamLimitError."""
        if self._streams[client] >= self.max_per_client:
            raise StreamLimitError(
                f"{self.max_per_client} event streams are open for this client already, its limit "
                f"(TRAINSERVE_MAX_EVENT_STREAMS_PER_CLIENT); close one first"
            )
        if self.open_streams >= self.max_streams:
            raise StreamLimitError(
                f"{self.max_streams} event streams are open already, this service's limit "
                f"(TRAINSERVE_MAX_EVENT_STREAMS); try again shortly"
            )
        self._streams[client] += 1
        return Slot(self, client)

    def release_stream(self, client: str) -> None:
        self._streams[client] -= 1
        if self._streams[client] <= 0:
            del self._streams[client]

    async def first(self, job_id: str) -> Snapshot | None:
        """The job's snapshot as followers see it now (read now if nobody follows it yet); None if no such job."""
        watched = self._watched.get(job_id)
        if watched is not None:
            return watched.snapshot
        found = await run_in_threadpool(read_snapshots, self.database_url, {job_id: None})
        return found.get(job_id)

    @contextlib.contextmanager
    def follow(self, job_id: str, snapshot: Snapshot) -> Iterator[_Watched]:
        watched = self._watched.get(job_id)
        if watched is None:
            watched = self._watched[job_id] = _Watched(snapshot)
        watched.followers += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            yield watched
        finally:
            watched.followers -= 1
            if watched.followers == 0:
                self._watched.pop(job_id, None)

    async def _poll(self) -> None:
        while self._watched:
            await asyncio.sleep(POLL_SECONDS)
            known: dict[str, Snapshot | None] = {job_id: w.snapshot for job_id, w in self._watched.items()}
            if not known:
                break
            try:
                changed = await run_in_threadpool(read_snapshots, self.database_url, known)
            except Exception:
                log.exception("event streams: reading the jobs failed; trying again")
                continue
            self.polls += 1
            for job_id, snapshot in changed.items():
                watched = self._watched.get(job_id)
                if watched is not None:
                    watched.snapshot = snapshot
                    watched.version += 1
                    event, watched.changed = watched.changed, asyncio.Event()
                    event.set()
