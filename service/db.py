"""Database tables, the engine and the session factory. The database is the source of truth for jobs and models.

Its schema is Alembic's (``service/migrations``): the first time a process uses a database, the migrations it has
not had yet are applied, one process at a time, and a database written before there were migrations is taken for
the first revision. ``trainserve db upgrade`` does the same on demand.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
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
    inspect,
    make_url,
    text,
)
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def utcnow() -> datetime:
    return datetime.now(UTC)


# Job, model and dataset ids: 32 lowercase hex digits (a UUID4 without dashes).
ID_PATTERN = r"^[0-9a-f]{32}$"
_ID = re.compile(ID_PATTERN)


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(text: str) -> bool:
    """Whether ``text`` is an id as this service writes them (so it may name a file in a store)."""
    return _ID.fullmatch(text) is not None


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
    # How its training ran in TensorFlow (steps per execution, XLA), as the worker resolved the request's options.
    execution: Mapped[dict[str, Any] | None]
    # How training ended (``worker.training.Outcome``): stopped and best epochs, the published epoch, the reason.
    training: Mapped[dict[str, Any] | None]
    # Who runs the job ("host:pid") and until when that claim holds unless renewed.
    worker_id: Mapped[str | None] = mapped_column(String(300))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # When the job's Celery message was last sent.
    dispatched_at: Mapped[datetime | None]
    # A client's Idempotency-Key, with the hash of the request it came with.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    # The last finished epoch's training state in the model store, which a taken-over job resumes from:
    # {"epoch", "attempt", "file", "sha256", "size_bytes", "resumed_from_epoch"}; None before the first epoch.
    # Once the job has ended only {"resumed_from_epoch"} stays, where its last attempt went on from (if it did).
    checkpoint: Mapped[dict[str, Any] | None]
    # A trial of an experiment: the experiment, the trial's number in its study, and its parameters by JSON path.
    experiment_id: Mapped[str | None] = mapped_column(String(32), index=True)
    trial_number: Mapped[int | None] = mapped_column(Integer)
    trial_params: Mapped[dict[str, Any] | None]
    # Its MLflow run, when TRAINSERVE_MLFLOW_TRACKING_URI is set: {"run_id", "experiment_id"}, and {"error"} with
    # the last thing MLflow refused (training went on without it).
    mlflow: Mapped[dict[str, Any] | None]
    # The pool of workers it trains in (``resources`` of its request); None is the default pool.
    pool: Mapped[str | None] = mapped_column(String(40))


class ExperimentStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExperimentRow(Base):
    """A search over a train request's fields: its trials are jobs (``JobRow.experiment_id``), its sampler's and
    pruner's state an Optuna study (``study_name``) in the same database."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True, default=ExperimentStatus.RUNNING)
    spec: Mapped[dict[str, Any]]
    study_name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # Trials asked of the sampler so far (those refused before queueing included).
    trials_asked: Mapped[int] = mapped_column(Integer, default=0)
    # The best finished trial's job, and the model published under the experiment's name from it.
    best_job_id: Mapped[str | None] = mapped_column(String(32))
    published_model_id: Mapped[str | None] = mapped_column(String(32))
    # One process advances an experiment at a time (until this instant, unless it renews); ``wakeups`` counts the
    # requests to advance it, so that one arriving meanwhile is not lost.
    advancing_until: Mapped[datetime | None]
    wakeups: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str | None] = mapped_column(Text)
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
    # The job that trained it; a job's model may also be published under another name, as another record.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
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
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # Its LiteRT flatbuffer beside the .keras file: {"sha256", "size_bytes"}, or {"error"} if it did not convert;
    # None for a model published before flatbuffers were made.
    litert: Mapped[dict[str, Any] | None]
    # A model trained on a text dataset: that dataset's ``TextEncoding``, so /predict takes raw text.
    text: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Its exports beside the .keras file, made when it was published (``service.exports``): per format
    # ("savedmodel", "weights") {"sha256", "size_bytes"}, or {"error"}; None for a model published before.
    exports: Mapped[dict[str, Any] | None]
    # Its version in MLflow's model registry, when TRAINSERVE_MLFLOW_TRACKING_URI is set: {"name", "version"}, or
    # {"error"}.
    mlflow: Mapped[dict[str, Any] | None]


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
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # A text dataset's ``TextEncoding``: its vocabulary, length and padding.
    text: Mapped[dict[str, Any] | None]


# Upper bounds (seconds) of the epoch-duration histogram that /metrics shows; the last bucket holds the rest.
EPOCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
EPOCH_BUCKET_LABELS = (*(f"{bound:g}" for bound in EPOCH_BUCKETS), "+Inf")


class EpochDurationRow(Base):
    """How many epochs took how long (one row per histogram bucket, counted as each epoch is recorded): the
    histogram costs a dozen rows to read however long the history grows."""

    __tablename__ = "epoch_durations"

    le: Mapped[str] = mapped_column(String(16), primary_key=True)
    epochs: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float]


def epoch_bucket(seconds: float) -> str:
    """The label of the first bucket an epoch of this duration fits."""
    for bound, label in zip(EPOCH_BUCKETS, EPOCH_BUCKET_LABELS, strict=False):
        if seconds <= bound:
            return label
    return "+Inf"


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The revision a database written before migrations is taken for: its tables are that revision's.
FIRST_REVISION = "0001"
# Where the database's revision is kept.
VERSION_TABLE = "trainserve_version"

_engines: dict[tuple[int, str], Engine] = {}
_sessions: dict[tuple[int, str], sessionmaker[Session]] = {}


def get_engine(url: str) -> Engine:
    """One engine per process and URL (an engine, its pool, must never cross a fork), on a database with every
    migration applied."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _make_engine(url)
        migrate(engine)
        _engines[key] = engine
    return engine


def migrate(engine: Engine) -> str:
    """Apply the migrations the database has not had yet; returns its revision. Processes starting together take
    turns (an advisory lock on PostgreSQL, a file lock beside a SQLite file)."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with _migration_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('trainserve-migrations'))"))
        tables = set(inspect(connection).get_table_names())
        config.attributes["connection"] = connection
        if VERSION_TABLE not in tables and "jobs" in tables:
            command.stamp(config, _revision_before_own_table(connection, tables) or FIRST_REVISION)
        context = {"version_table": VERSION_TABLE}
        before = MigrationContext.configure(connection, opts=context).get_current_revision()
        command.upgrade(config, "head")
        revision = MigrationContext.configure(connection, opts=context).get_current_revision()
    if revision != before:
        log.info("database %s upgraded from revision %s to %s", engine.url.render_as_string(), before, revision)
    return str(revision)


def _revision_before_own_table(connection: Connection, tables: set[str]) -> str | None:
    """The revision a database kept in Alembic's default table before it had its own: taken out of that table,
    which is then left to Optuna (whose studies share the database). None when there is none of this service's."""
    if "alembic_version" not in tables:
        return None
    revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if revision is None or not any((MIGRATIONS / "versions").glob(f"{revision}_*.py")):
        return None
    connection.execute(text("DROP TABLE alembic_version"))
    return str(revision)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrations.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    connect_args: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "postgresql":
        # A server that vanished (a host cut off, a restart) is noticed in seconds, not after the kernel's quarter
        # of an hour of retransmissions: connecting waits 5 s, an idle connection is probed after 5 s, and unsent
        # data waits 10 s at most. The writes that must get through retry (``retried``).
        connect_args = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
        }
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def session_factory(url: str) -> sessionmaker[Session]:
    """One session factory per process and URL."""
    key = (os.getpid(), url)
    factory = _sessions.get(key)
    if factory is None:
        factory = _sessions[key] = sessionmaker(get_engine(url), expire_on_commit=False)
    return factory


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


T = TypeVar("T")

# What a write that fails because the database went away meanwhile raises (a restart, a cut link): worth another
# try once it is back. Anything else (a constraint, a bug) is not.
UNREACHABLE = (OperationalError, InterfaceError)


def retried(url: str, write: Callable[[Session], T], *, what: str, seconds: float) -> T:
    """``write`` in a session of its own, committed; tried again with backoff (0.2 s doubling to 5 s) while the
    database cannot be reached, for up to ``seconds``, then the last error is raised. ``write`` must be
    idempotent: a commit whose answer was lost is tried again (the job functions see their own earlier write)."""
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            with session_scope(url) as session:
                return write(session)
        except UNREACHABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: the database is unreachable (%s); trying again in %.1f s", what, _first_line(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
