"""Database tables and engine. The database is the source of truth for jobs and models."""

from __future__ import annotations

import enum
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def utcnow() -> datetime:
    return datetime.now(UTC)


# Job and model ids: 32 lowercase hex digits (a UUID4 without dashes).
ID_PATTERN = r"^[0-9a-f]{32}$"


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.QUEUED)
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    model_id: Mapped[str | None] = mapped_column(String(32))
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    evaluation: Mapped[dict[str, Any] | None]
    # Who runs the job ("host:pid") and until when that claim holds unless renewed.
    worker_id: Mapped[str | None] = mapped_column(String(300))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # When the job's Celery message was last sent.
    dispatched_at: Mapped[datetime | None]
    # A client's Idempotency-Key, with the hash of the request it came with.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))


class EpochRow(Base):
    """One finished epoch of a job: loss, every metric and the val_* ones, as Keras reported them."""

    __tablename__ = "job_epochs"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]
    metrics: Mapped[dict[str, Any]]
    seconds: Mapped[float | None] = mapped_column(doc="How long the epoch took, validation included.")
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRow(Base):
    __tablename__ = "models"
    # Versions 1, 2, 3… of each name; two jobs of one name finishing together cannot both take the same number.
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    spec: Mapped[dict[str, Any]]
    dataset: Mapped[dict[str, Any]]
    input_shape: Mapped[list[Any]]
    class_names: Mapped[list[Any] | None]
    metrics: Mapped[dict[str, Any]]
    evaluation: Mapped[dict[str, Any] | None]
    summary: Mapped[dict[str, Any]]
    # The names the stored .keras file uses (TensorFlow-safe forms of the user's names).
    keras_names: Mapped[dict[str, Any]]
    path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DatasetRow(Base):
    """An uploaded dataset: what was understood from the file, and where its normalised arrays are stored."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(500))
    # sha256 of the uploaded bytes, and of those bytes with the options that shaped the arrays (label column,
    # image size, colour mode): the same file uploaded the same way is the same dataset.
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_key: Mapped[str] = mapped_column(String(64), unique=True)
    options: Mapped[dict[str, Any]]
    x_shape: Mapped[list[Any]]
    y_shape: Mapped[list[Any]]
    num_classes: Mapped[int]
    class_names: Mapped[list[Any] | None]
    class_counts: Mapped[list[Any]]
    splits: Mapped[dict[str, Any]]
    stats: Mapped[dict[str, Any]]
    path: Mapped[str] = mapped_column(String(500))
    file_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


_engines: dict[tuple[int, str], Engine] = {}


def get_engine(url: str) -> Engine:
    """One engine per process and URL: an engine (its pool) must never cross a fork."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _make_engine(url)
        try:
            Base.metadata.create_all(engine)
        except OperationalError:
            # Another process (the API and a worker starting together) created a table between this one's check
            # and its CREATE: look again, and create only what is still missing.
            Base.metadata.create_all(engine)
        _engines[key] = engine
    return engine


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes; the API and every worker share this file.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
