"""Dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from service.api.body_buffers import BodyBuffers
from service.db import session_factory
from service.queue import JobQueue
from service.serving.engine import Engine
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


def engine_of(request: Request) -> Engine:
    """The serving engine: as a dependency, and called by the prediction endpoints that take no dependencies."""
    engine: Engine = request.app.state.engine
    return engine


def bodies_of(request: Request) -> BodyBuffers:
    """The receive buffers kept between prediction requests."""
    bodies: BodyBuffers = request.app.state.bodies
    return bodies


# Pages of a list: at most 500 items; an offset past any table this service keeps (and within every database's
# integers) is refused rather than sent to the database.
MAX_OFFSET = 1_000_000_000
Limit = Annotated[int, Query(ge=1, le=500, description="How many, at most.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="How many to skip, newest first.")]

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
EngineDep = Annotated[Engine, Depends(engine_of)]
