"""Settings, read once from ``TRAINSERVE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Each field is the environment variable ``TRAINSERVE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TRAINSERVE_", extra="ignore")

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
    model_store: Path | None = Field(
        default=None,
        description="Directory of trained `.keras` files, shared by the API and every worker. Default `home/models`.",
    )
    dataset_store: Path | None = Field(
        default=None,
        description="Directory of uploaded datasets (normalised `.npz` files), shared by the API and every worker. "
        "Default `home/datasets`.",
    )
    max_upload_bytes: int = Field(
        default=1024**3, ge=1, description="Largest dataset file POST /datasets accepts (413 beyond)."
    )
    max_dataset_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Largest dataset an upload may decode to, as float32 arrays (images and compressed .npz "
        "members grow when decoded).",
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
    job_time_limit: float = Field(
        default=3600, gt=0, description="Seconds one training job may run before it fails with `timeout`."
    )
    predict_cache_size: int = Field(default=8, ge=1, description="Loaded models kept in memory by the API.")
    predict_cache_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="Memory the loaded models may take together (their weights), in bytes; the least recently "
        "used are unloaded beyond it (the model in use always stays).",
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
    max_predict_instances: int = Field(
        default=10_000, ge=1, description="Most instances one predict request may carry (413 beyond)."
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
    sse_heartbeat: float = Field(
        default=15.0, gt=0, description="Seconds between keep-alive comments on an idle event stream."
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
    reconcile_interval: float = Field(
        default=10.0, gt=0, description="Seconds between a worker's checks for orphaned jobs and lost messages."
    )

    # Limits
    max_request_bytes: int = Field(
        default=128 * 1024 * 1024, ge=1024, description="Largest request body (413 beyond), uploads aside."
    )
    max_model_params: int = Field(default=50_000_000, ge=1, description="Largest model, in parameters.")
    max_epochs: int = Field(default=1000, ge=1, description="Most epochs one job may ask for.")
    max_layers: int = Field(default=100, ge=1, description="Most layers one model may have.")

    # Access
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; when set, every endpoint but health and docs needs "
        "`Authorization: Bearer KEY`. A key written `KEY:read` may only read and predict.",
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'trainserve.db'}"
        if self.model_store is None:
            self.model_store = self.home / "models"
        if self.dataset_store is None:
            self.dataset_store = self.home / "datasets"
        return self

    @property
    def store_dir(self) -> Path:
        assert self.model_store is not None  # filled by the validator
        return self.model_store

    @property
    def datasets_dir(self) -> Path:
        assert self.dataset_store is not None  # filled by the validator
        return self.dataset_store

    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers an unacknowledged message after this many seconds: keep it past any job's end."""
        return int(self.job_time_limit) + 600


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
