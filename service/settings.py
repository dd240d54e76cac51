"""Settings, read once from ``TRAINSERVE_*`` environment variables."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024
GIB = 1024 * MIB

# A pool's name: what `trainserve worker --pool NAME` offers and a request's `resources.pool` asks for. It becomes
# part of a Redis key and of a Celery queue's name, hence the narrow alphabet.
POOL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
DEFAULT_POOL = "default"

# What a key may do: ``KEY`` everything, ``KEY:read`` read and predict only.
SCOPES = ("", "read")


@dataclass(frozen=True)
class ApiKey:
    secret: bytes
    read_only: bool

    @property
    def label(self) -> str:
        """Names the key in logs and limits without revealing it."""
        return "key-" + hashlib.sha256(self.secret).hexdigest()[:12]


def parse_api_keys(text: str) -> list[ApiKey]:
    """``KEY`` has full access, ``KEY:read`` may read and predict only; any other scope is an error, so that a
    typo never turns a key meant to be limited into a full-access one. Errors never repeat a key."""
    keys = []
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        secret, _, scope = entry.partition(":")
        secret, scope = secret.strip(), scope.strip().lower()
        if not secret:
            raise ValueError(f"API key {number} is empty; write KEY or KEY:read")
        if scope not in SCOPES:
            raise ValueError(
                f"API key {number} has the unknown scope {scope[:20]!r}; write KEY for full access or KEY:read"
            )
        keys.append(ApiKey(secret.encode(), read_only=scope == "read"))
    return keys


class Settings(BaseSettings):
    """Every knob of the service. Each field is the environment variable ``TRAINSERVE_<NAME>``."""

    # Errors never repeat a value: TRAINSERVE_API_KEYS holds secrets.
    model_config = SettingsConfigDict(env_prefix="TRAINSERVE_", extra="ignore", hide_input_in_errors=True)

    home: Path = Field(
        default=Path("trainserve-data"),
        description="Data directory: the SQLite database, the model store and the embedded Redis live here.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the job/model database. Empty means a SQLite file in `home`.",
    )
    redis_url: str = Field(
        default="",
        description="Broker URL (redis://host:port/db). Required by `api` and `worker`; "
        "`serve` starts a private Redis when it is empty.",
    )
    model_store: str = Field(
        default="models",
        description="Where trained models (and running jobs' checkpoints) are kept, shared by the API and every "
        "worker: a directory (a relative path is inside `home`) or an object store's URL (`s3://bucket/prefix`, or "
        "any other URL fsspec reaches).",
    )
    dataset_store: str = Field(
        default="datasets",
        description="Where uploaded datasets (normalised `.npz` files) are kept, shared by the API and every worker: "
        "a directory (a relative path is inside `home`) or an object store's URL.",
    )
    store_cache_bytes: int = Field(
        default=10 * GIB,
        ge=0,
        description="Local copies of files read from an object store, kept by sha256 in `home`/cache, least "
        "recently used out first beyond this.",
    )
    max_upload_bytes: int = Field(
        default=GIB, ge=1, description="Largest dataset file POST /datasets accepts (413 beyond)."
    )
    max_dataset_bytes: int = Field(
        default=GIB,
        ge=1,
        description="Largest dataset an upload may become: its stored arrays (image pixels as bytes, other "
        "inputs as float32), counted before anything is decoded (413 beyond).",
    )
    dataset_quota_bytes: int = Field(
        default=20 * GIB, ge=1, description="Bytes all stored datasets may take together (413 beyond)."
    )
    max_dataset_files: int = Field(
        default=100_000, ge=1, description="Most files a .zip upload may hold (images, or .npz arrays)."
    )
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Largest image in a .zip upload, in pixels before resizing."
    )
    max_decoded_pixels: int = Field(
        default=1_000_000_000,
        ge=1,
        description="Pixels the images of one .zip upload may have together before resizing: what decoding costs.",
    )
    max_label_length: int = Field(default=256, ge=1, description="Longest class name (label) in an upload.")
    max_classes: int = Field(default=10_000, ge=2, description="Most classes a dataset may have.")
    max_csv_columns: int = Field(default=100_000, ge=2, description="Most columns a .csv upload may have.")
    max_distinct_words: int = Field(
        default=2_000_000, ge=1, description="Most distinct words counted while a .csv of texts gets its vocabulary."
    )
    ingest_time_limit: float = Field(
        default=300.0, gt=0, description="Seconds the API may spend reading one uploaded file into a dataset."
    )
    max_concurrent_ingests: int = Field(
        default=1,
        ge=1,
        description="Uploads read into datasets at once, each in its own thread apart from the request threads; "
        "others wait for a turn (503 after a minute).",
    )
    keras_cache: Path | None = Field(
        default=None,
        description="Keras' cache directory (KERAS_HOME) where keras.datasets files are looked for. "
        "Default: Keras' own (~/.keras).",
    )
    queue: str = Field(default="trainserve", description="Celery queue the training jobs go to.")
    worker_concurrency: int = Field(
        default=1, ge=1, description="Training processes per worker (each keeps TensorFlow loaded)."
    )
    database_retry_seconds: float = Field(
        default=120.0,
        ge=0.0,
        description="How long a worker keeps trying a write (an epoch, a checkpoint's record, a job's end) while "
        "the database cannot be reached, with backoff, before its job fails: a database restart costs a pause.",
    )
    worker_pools: str = Field(
        default=DEFAULT_POOL,
        description="Comma-separated pools whose jobs a worker takes (`trainserve worker --pool`); a job asks for "
        "one with `resources.pool`.",
    )
    worker_accelerator: Literal["cpu", "gpu"] = Field(
        default="cpu",
        description="`gpu`: the worker's training processes let TensorFlow grow its GPU memory as needed and run "
        "one job each (TensorFlow keeps GPU memory for the life of a process); its pools default to `gpu`.",
    )
    max_experiment_trials: int = Field(
        default=1000, ge=1, description="Most trials one experiment may ask for (`max_trials`; 422 beyond)."
    )
    experiment_check_limit: int = Field(
        default=64,
        ge=1,
        description="A search space of at most this many distinct trials is dry-built whole at submit (one "
        "that can make an invalid model is a 422); a larger one has each trial checked before it is queued.",
    )
    job_time_limit: float = Field(
        default=3600, gt=0, description="Seconds one training job may run before it fails with `timeout`."
    )
    predict_cache_size: int = Field(default=8, ge=1, description="Loaded models kept in memory by the API.")
    predict_cache_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="Memory the loaded models may take together (their weights and LiteRT flatbuffers), in bytes; "
        "the least recently used are unloaded beyond it (the model in use always stays).",
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description="Most instances merged from concurrent predict requests for one model into one call "
        "(a larger request runs alone).",
    )
    max_latency_ms: float = Field(
        default=2.0,
        ge=0,
        description="Longest a predict request waits for others to join its batch while more keep arriving; "
        "a request that finds the model idle and nobody else arriving starts at once.",
    )
    predict_xla: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="XLA-compiled model calls for batches up to `max_batch_size`, padded to a power of two and "
        "compiled in the background on first use. `auto`: each batch size keeps XLA or the plain graph, "
        "whichever is faster when timed after compiling; `always`; `never`: the graph only.",
    )
    predict_litert: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="LiteRT for batches up to `max_batch_size`: each model is converted to a TFLite flatbuffer "
        "when it is published (stored beside its .keras file), and an API process that loads it checks its outputs "
        "against TensorFlow's on a probe batch. `auto`: each padded batch size keeps LiteRT, XLA or the graph, "
        "whichever is fastest when timed; `always`: LiteRT wherever it runs; `never`: no conversion, no LiteRT.",
    )
    max_predict_instances: int = Field(
        default=10_000, ge=1, description="Most instances one predict request may carry (413 beyond)."
    )
    max_activation_bytes: int = Field(
        default=GIB,
        ge=MIB,
        description="Memory the layer outputs of one model call may take (float32, estimated from the shapes): "
        "a training batch must fit (422 at submit), and predictions run in chunks that do.",
    )
    max_training_data_bytes: int = Field(
        default=8 * GIB,
        ge=MIB,
        description="Memory a job's arrays may take in the worker: float32 inputs and labels as its loss "
        "expects them (one-hot rows for categorical losses); 422 at submit beyond.",
    )
    max_response_bytes: int = Field(
        default=64 * MIB, ge=MIB, description="Largest answer built from stored data, e.g. dataset samples (422)."
    )
    log_level: str = Field(default="INFO", description="Log level of the API and the worker.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json`: one JSON object per log line, with `job_id` while a job trains."
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's own OpenTelemetry spans and metrics for every request, sent to the providers "
        "configured in the process (e.g. by `opentelemetry-instrument`). Off, the API does not look for them on "
        "each request; /metrics (Prometheus) counts and times requests either way.",
    )
    mlflow_tracking_uri: str = Field(
        default="",
        description="An MLflow tracking server (e.g. http://mlflow:5000): each job is logged there as a run (its "
        "spec's fields as params, every epoch's metrics, the evaluation, the .keras file) and each published model "
        "registered under its name. Needs the `mlflow` extra in the workers. Empty: no MLflow.",
    )
    mlflow_experiment: str = Field(
        default="TrainServe", min_length=1, description="The MLflow experiment the jobs' runs go to."
    )
    mlflow_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Longest a worker waits, once a job has ended, for MLflow to take what is left to log; MLflow "
        "is written to in the background and never holds training up.",
    )
    sse_heartbeat: float = Field(
        default=15.0, gt=0, description="Seconds between keep-alive comments on an idle event stream."
    )
    max_event_streams: int = Field(default=1000, ge=1, description="Event streams open at once, in all (429).")
    max_event_streams_per_client: int = Field(
        default=20, ge=1, description="Event streams one API key (or, without keys, one address) may hold open (429)."
    )
    event_stream_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="An event stream ends after this long (clients reconnect with Last-Event-ID and go on).",
    )

    # Recovery
    max_attempts: int = Field(
        default=3, ge=1, description="Times a job is started before a dying worker makes it fail for good."
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running job's worker renews its lease this often (a third of it); a job whose lease "
        "has run out is taken as orphaned and started again.",
    )
    checkpoint_quota_bytes: int = Field(
        default=10 * GIB,
        ge=1,
        description="Bytes the running jobs' epoch checkpoints may take together in the model store; a job whose "
        "next checkpoint would pass it trains on without one (and would restart from its first epoch if its "
        "worker died).",
    )
    reconcile_interval: float = Field(
        default=10.0, gt=0, description="Seconds between a worker's checks for orphaned jobs and lost messages."
    )
    worker_max_memory_bytes: int = Field(
        default=4 * GIB,
        ge=64 * MIB,
        description="A training process whose resident memory has passed this after a job is replaced by a fresh "
        "one before the next job (never during one).",
    )

    # Limits
    max_request_bytes: int = Field(
        default=128 * MIB, ge=1024, description="Largest request body (413 beyond), uploads aside."
    )
    max_inflight_bytes: int = Field(
        default=512 * MIB,
        ge=1024,
        description="Bytes of request bodies all requests being received may hold together, uploads aside "
        "(which stream to disk); 503 with Retry-After beyond.",
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="Longest wait for the next piece of a request body (408 beyond)."
    )
    max_model_params: int = Field(default=50_000_000, ge=1, description="Largest model, in parameters.")
    max_epochs: int = Field(default=1000, ge=1, description="Most epochs one job may ask for.")
    max_layers: int = Field(default=100, ge=1, description="Most layers one model may have.")

    # Access
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; when set, every endpoint but health and docs needs "
        "`Authorization: Bearer KEY`. A key written `KEY:read` may only read and predict; any other scope "
        "stops the service from starting.",
    )

    @field_validator("api_keys")
    @classmethod
    def _known_scopes(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    @property
    def pools(self) -> list[str]:
        """The pools this worker takes jobs from, in the order given."""
        return list(dict.fromkeys(name.strip() for name in self.worker_pools.split(",") if name.strip()))

    @field_validator("worker_pools")
    @classmethod
    def _pool_names(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if not names:
            raise ValueError("name at least one pool")
        for name in names:
            if re.fullmatch(POOL_PATTERN, name) is None:
                raise ValueError(
                    f"pool {name[:40]!r} is not a pool name: lower-case letters, digits, '-' and '_', at most 40"
                )
        return value

    @property
    def keys(self) -> list[ApiKey]:
        return parse_api_keys(self.api_keys)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'trainserve.db'}"
        self.model_store = _located(self.home, self.model_store)
        self.dataset_store = _located(self.home, self.dataset_store)
        return self

    @field_validator("model_store", "dataset_store", mode="before")
    @classmethod
    def _path_or_url(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @property
    def upload_staging(self) -> Path:
        """Where an upload is received, on local disk, before it is read into a dataset."""
        return self.home / "uploads"

    @property
    def store_cache(self) -> Path:
        """Where files read from an object store are kept locally."""
        return self.home / "cache"

    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers an unacknowledged message after this many seconds: keep it past any job's end."""
        return int(self.job_time_limit) + 600


def is_url(location: str | Path) -> bool:
    """Whether a store setting names an object store (``scheme://…``, but ``file://``) rather than a directory."""
    text = str(location)
    return re.match(r"^[a-z][a-z0-9+.-]*://", text) is not None and not text.startswith("file://")


def _located(home: Path, location: str) -> str:
    """A store setting as used: a URL as it is, a directory (``file://`` or a plain path) as a path, a relative
    one inside ``home``."""
    if is_url(location):
        return location
    return str(home / Path(location.removeprefix("file://")).expanduser())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
