"""Dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from service.api.predictor import Serving
from service.db import session_factory
from service.queue import JobQueue
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    session = session_factory(get_settings(request).database_url)()
    try:
        yield session
    finally:
        session.close()


def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


# Pages of a list: at most 500 items; an offset past any table this service keeps (and within every database's
# integers) is refused rather than sent to the database.
MAX_OFFSET = 1_000_000_000
Limit = Annotated[int, Query(ge=1, le=500, description="How many, at most.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="How many to skip, newest first.")]

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
ServingDep = Annotated[Serving, Depends(get_serving)]
