"""The service's JSON as the API's schemas declare it (service/api/schemas.py, service/api/experiment_schemas.py),
written out here so that the client types what it reads without importing the server."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, TypeVar

T = TypeVar("T")

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TrialState = Literal["queued", "running", "complete", "pruned", "failed", "cancelled", "refused"]
ExperimentStatus = Literal["running", "succeeded", "failed", "cancelled"]
# A job's status once it has ended.
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class BuildEstimate(TypedDict):
    total_params: int
    output_shape: list[int | None]
    activation_bytes: int
    training_data_bytes: int


class JobCreated(TypedDict):
    """POST /train's answer."""

    job_id: str
    status: JobStatus
    build: BuildEstimate | None


class Progress(TypedDict):
    epoch: int
    epochs: int


class JobError(TypedDict):
    type: str
    message: str


class TrainingOutcome(TypedDict):
    epochs_run: int
    stopped_epoch: int | None
    stop_reason: str | None
    best_epoch: int | None
    monitor: str | None
    published_epoch: int


class TrialLink(TypedDict):
    experiment_id: str
    number: int
    params: dict[str, Any]


class JobRecord(TypedDict):
    """GET /jobs/{id}."""

    job_id: str
    name: str | None
    status: JobStatus
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    progress: Progress
    history: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    execution: dict[str, Any] | None
    training: TrainingOutcome | None
    model_id: str | None
    error: JobError | None
    cancel_requested: bool
    worker: str | None
    resumed_from_epoch: NotRequired[int | None]
    trial: NotRequired[TrialLink | None]
    spec: dict[str, Any]


class ModelRecord(TypedDict):
    """GET /models/{id}."""

    model_id: str
    name: str
    version: int
    job_id: str
    created_at: str
    spec: dict[str, Any]
    dataset: dict[str, Any]
    input_shape: list[int]
    class_names: list[str] | None
    metrics: dict[str, Any]
    evaluation: dict[str, Any] | None
    total_params: int
    keras_names: dict[str, Any]
    sha256: str
    size_bytes: int
    litert: dict[str, Any] | None


class TrialProgress(TypedDict):
    epoch: int
    epochs: int


class TrialRecord(TypedDict):
    number: int
    job_id: str
    state: TrialState
    params: dict[str, Any]
    objective: float | None
    progress: TrialProgress
    last: dict[str, Any] | None
    stopped_epoch: int | None
    stop_reason: str | None
    model_id: str | None
    error: JobError | None


class BestTrial(TypedDict):
    number: int
    job_id: str
    objective: float
    params: dict[str, Any]
    model_id: str | None


class Objective(TypedDict):
    metric: str
    direction: Literal["max", "min"]
    source: Literal["evaluation", "last_epoch", "best_epoch"]


class ExperimentRecord(TypedDict):
    """GET /experiments/{id}; also each `experiment` event of its stream (without trials and spec)."""

    experiment_id: str
    name: str
    status: ExperimentStatus
    created_at: str
    finished_at: str | None
    cancel_requested: bool
    search: str
    objective: Objective
    pruner: str | None
    params: list[str]
    max_trials: int
    max_parallel: int
    trials_asked: int
    counts: dict[str, int]
    best: BestTrial | None
    published_model_id: str | None
    error: str | None
    # Both left out of the event stream's `experiment` events; `trials` is null in lists.
    trials: NotRequired[list[TrialRecord] | None]
    spec: NotRequired[dict[str, Any]]


class ExperimentCreated(TypedDict):
    experiment_id: str
    status: ExperimentStatus
    trials: int
    checked: int


@dataclass(frozen=True)
class EpochEvent:
    """`event: epoch`: an epoch finished; ``row`` is its history row (epoch, loss, metrics, val_*, learning_rate)
    and the attempt that trained it."""

    row: dict[str, Any]


class JobState(TypedDict):
    """What a job's `status` event says of it: its status, progress, model and error, not its history."""

    job_id: str
    status: JobStatus
    attempts: int
    progress: Progress
    model_id: str | None
    error: JobError | None
    cancel_requested: bool
    training: TrainingOutcome | None
    resumed_from_epoch: int | None


@dataclass(frozen=True)
class StatusEvent:
    """`event: status`: the job's status changed; ``state`` is what it is now."""

    state: JobState


JobEvent = EpochEvent | StatusEvent


@dataclass(frozen=True)
class TrialChanged:
    """`event: trial`: a trial's state, progress, last epoch or objective changed."""

    trial: TrialRecord


@dataclass(frozen=True)
class ExperimentChanged:
    """`event: experiment`: the experiment's status, counts or best trial changed (its trials left out)."""

    experiment: ExperimentRecord


ExperimentEvent = TrialChanged | ExperimentChanged


class Page(list[T]):
    """One page of a listing, newest first: a list, with ``count``, how many match over all pages."""

    def __init__(self, items: Iterable[T], total: int) -> None:
        super().__init__(items)
        self.total = total

    @property
    def count(self) -> int:  # type: ignore[override]
        """How many match over all pages (``len()`` is this page's)."""
        return self.total
