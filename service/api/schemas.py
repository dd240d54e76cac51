"""Response bodies and the predict request."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from service.db import JobRow, JobStatus, ModelRow
from service.jobs import resumed_from_epoch
from service.settings import DEFAULT_POOL
from service.spec import exactly_one_of

if TYPE_CHECKING:
    from service.keras_build import DryBuild


class BuildEstimate(BaseModel):
    """What building the model once, before it was queued, found."""

    total_params: int = Field(description="Parameters of the model, as `model.summary()` counts them.")
    output_shape: list[int | None] = Field(description="The model's output shape; `null` is the batch dimension.")
    activation_bytes: int = Field(
        description="float32 bytes one instance's input and layer outputs take: a prediction on n instances "
        "needs n times this."
    )
    training_data_bytes: int = Field(description="What the job's inputs and labels take in the worker's memory.")

    @classmethod
    def from_build(cls, build: DryBuild) -> BuildEstimate:
        return cls(
            total_params=build.total_params,
            output_shape=list(build.output_shape),
            activation_bytes=build.activation_bytes,
            training_data_bytes=build.data_bytes,
        )


class JobCreated(BaseModel):
    job_id: str
    status: JobStatus
    build: BuildEstimate | None = Field(
        default=None, description="The dry build's findings; absent when the job is an earlier one replayed."
    )


class Progress(BaseModel):
    epoch: int = Field(description="Epochs finished so far.")
    epochs: int = Field(description="Epochs requested.")


class JobError(BaseModel):
    type: str = Field(examples=["DatasetUnavailable"])
    message: str


class Execution(BaseModel):
    steps_per_execution: int = Field(description="Training steps per call into TensorFlow.")
    jit_compile: bool = Field(description="Whether the training step is compiled with XLA.")


class TrainingOutcome(BaseModel):
    epochs_run: int = Field(description="Epochs trained: fewer than asked when a callback stopped the training.")
    stopped_epoch: int | None = Field(description="The epoch early stopping stopped at (1-based), or null.")
    stop_reason: str | None = Field(
        description="Why training stopped before its last epoch, e.g. 'early_stopping: val_loss did not improve "
        "for 2 epochs after epoch 5 (val_loss 0.3412)'."
    )
    best_epoch: int | None = Field(
        description="The best epoch by the monitored value (the checkpoint's, else early "
        "stopping's), or null without either."
    )
    monitor: str | None = Field(description="What the best epoch is best by.")
    published_epoch: int = Field(
        description="Whose weights the published model has: the checkpoint's best epoch, "
        "early stopping's restored one, else the last."
    )


class TrialLink(BaseModel):
    experiment_id: str
    number: int = Field(description="The trial's number in the experiment's study, from 0.")
    params: dict[str, Any] = Field(description="The trial's values, by the JSON path each one replaced.")


class MlflowJob(BaseModel):
    run_id: str | None = Field(
        default=None, description="The job's run in MLflow; an attempt that resumes it goes on in it."
    )
    experiment_id: str | None = Field(default=None, description="The MLflow experiment of the run.")
    error: str | None = Field(
        default=None, description="The last thing MLflow refused or did not answer (training went on without it)."
    )


class JobRead(BaseModel):
    job_id: str
    name: str | None
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    progress: Progress
    history: list[dict[str, Any]] = Field(
        description="One row per finished epoch: epoch, loss, every metric and the val_* ones."
    )
    evaluation: dict[str, Any] | None = Field(description="Metrics on the held-out split, when there is one.")
    execution: Execution | None = Field(
        description="How the training runs in TensorFlow, the request's 'auto' options resolved; null until a "
        "worker has built the model."
    )
    training: TrainingOutcome | None = Field(
        description="How training ended, once the job has succeeded: stopped and best epochs, the published one."
    )
    model_id: str | None
    error: JobError | None
    cancel_requested: bool
    worker: str | None = Field(description="The worker process (host:pid) that runs or last ran the job.")
    resumed_from_epoch: int | None = Field(
        default=None,
        description="The epoch the current (or, once the job has ended, the last) attempt resumed after, from the "
        "checkpoint its earlier attempt saved when that epoch ended: its history up to that epoch is the earlier "
        "attempt's. Null when the attempt started from the first epoch. Kept in the job's `checkpoint` record, "
        "which holds only this once the job has ended and its checkpoint file is removed.",
    )
    trial: TrialLink | None = Field(default=None, description="The experiment this job is a trial of, if any.")
    mlflow: MlflowJob | None = Field(
        default=None, description="Where the job is logged in MLflow, when TRAINSERVE_MLFLOW_TRACKING_URI is set."
    )
    pool: str = Field(default=DEFAULT_POOL, description="The pool of workers it trains in (`resources`).")
    unschedulable: str | None = Field(
        default=None,
        description="Why a queued job is not being taken: no worker of its pool is running. Null while one is "
        "(or once the job runs).",
    )
    spec: dict[str, Any]

    @classmethod
    def from_row(
        cls, job: JobRow, history: list[dict[str, Any]], unschedulable: Mapping[str, str] | None = None
    ) -> JobRead:
        """``unschedulable``: the pools no worker takes now, with why (``JobQueue.unschedulable``)."""
        error = JobError(type=job.error_type, message=job.error_message or "") if job.error_type else None
        pool = job.pool or DEFAULT_POOL
        waiting = (unschedulable or {}).get(pool) if job.status == JobStatus.QUEUED else None
        return cls(
            job_id=job.id,
            name=job.name,
            status=JobStatus(job.status),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            progress=Progress(epoch=job.epoch, epochs=job.epochs),
            history=history,
            evaluation=job.evaluation,
            execution=Execution(**job.execution) if job.execution else None,
            training=TrainingOutcome(**job.training) if job.training else None,
            model_id=job.model_id,
            error=error,
            cancel_requested=job.cancel_requested,
            worker=job.worker_id,
            resumed_from_epoch=resumed_from_epoch(job.checkpoint),
            trial=None
            if job.experiment_id is None
            else TrialLink(
                experiment_id=job.experiment_id, number=job.trial_number or 0, params=job.trial_params or {}
            ),
            mlflow=MlflowJob(**job.mlflow) if job.mlflow else None,
            pool=pool,
            unschedulable=waiting,
            spec=job.spec,
        )


class JobList(BaseModel):
    data: list[JobRead]
    count: int = Field(description="Jobs matching the filter, over all pages.")


class LiteRt(BaseModel):
    sha256: str | None = Field(default=None, description="Of the `.tflite` file beside the `.keras` one.")
    size_bytes: int | None = None
    error: str | None = Field(default=None, description="Why the model has no flatbuffer: the converter's error.")
    rescaled: bool = Field(
        default=False,
        description="The flatbuffer applies the rescale itself and takes the dataset's units, as the SavedModel "
        "export does (false for a flatbuffer made before, which takes inputs already rescaled).",
    )


class ExportFile(BaseModel):
    sha256: str | None = Field(default=None, description="Of the stored file.")
    size_bytes: int | None = None
    error: str | None = Field(default=None, description="Why the model has no such export.")


class Exports(BaseModel):
    savedmodel: ExportFile | None = Field(
        default=None, description="The SavedModel (`GET /models/{id}/download?format=savedmodel`), stored as a tar."
    )
    weights: ExportFile | None = Field(default=None, description="The `.weights.h5` file (`format=weights`).")


class MlflowModel(BaseModel):
    name: str | None = Field(default=None, description="The registered model's name in MLflow's registry.")
    version: str | None = Field(default=None, description="Its version there (MLflow numbers them itself).")
    error: str | None = Field(default=None, description="Why it is not registered: what MLflow answered.")


class ModelRead(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    name: str
    version: int = Field(description="Version of `name`: 1 for its first model, then 2, 3, …")
    job_id: str
    created_at: datetime
    spec: dict[str, Any]
    dataset: dict[str, Any]
    input_shape: list[int]
    class_names: list[str] | None
    metrics: dict[str, Any] = Field(description="The last epoch's loss and metrics.")
    evaluation: dict[str, Any] | None = Field(description="Metrics on the held-out split, when there is one.")
    total_params: int
    keras_names: dict[str, Any] = Field(
        description="Model and layer names inside the .keras file; names TensorFlow cannot run under "
        "(spaces, non-ASCII) are stored in an ASCII form."
    )
    sha256: str
    size_bytes: int
    litert: LiteRt | None = Field(
        description="The model converted to a LiteRT flatbuffer when it was published, which serves small "
        "batches where it is faster than TensorFlow; null for a model published before flatbuffers were made."
    )
    exports: Exports | None = Field(
        default=None,
        description="Its exports made when it was published (see `GET /models/{id}/download?format=`); null for a "
        "model published before exports were made.",
    )
    mlflow: MlflowModel | None = Field(
        default=None, description="Its version in MLflow's model registry, when TRAINSERVE_MLFLOW_TRACKING_URI is set."
    )

    @classmethod
    def from_row(cls, row: ModelRow) -> ModelRead:
        return cls(
            model_id=row.id,
            name=row.name,
            version=row.version,
            job_id=row.job_id,
            created_at=row.created_at,
            spec=row.spec,
            dataset=row.dataset,
            input_shape=row.input_shape,
            class_names=row.class_names,
            metrics=row.metrics,
            evaluation=row.evaluation,
            total_params=row.summary["total_params"],
            keras_names=row.keras_names,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            litert=LiteRt(**row.litert) if row.litert else None,
            exports=Exports.model_validate(row.exports) if row.exports else None,
            mlflow=MlflowModel(**row.mlflow) if row.mlflow else None,
        )


class ModelList(BaseModel):
    data: list[ModelRead]
    count: int


class LayerSummary(BaseModel):
    name: str
    type: str = Field(examples=["Dense"])
    output_shape: list[int | None] = Field(examples=[[None, 100]])
    params: int


class ModelSummary(BaseModel):
    name: str
    layers: list[LayerSummary]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    text: str = Field(description="What Keras' model.summary() prints for this model.")


class SpecPreview(ModelSummary):
    """What `POST /train?dry_run=true` found: the model's summary, as `GET /models/{model_id}/summary` will answer it
    once the model is trained, and the dry build's findings."""

    build: BuildEstimate

    @classmethod
    def from_build(cls, build: DryBuild) -> SpecPreview:
        assert build.summary is not None, "a preview's dry build summarises the model"
        return cls.model_validate({**build.summary, "build": BuildEstimate.from_build(build)})


# The first image of scikit-learn's digits (a 0), in the dataset's 0-16 units: an instance for the chapter's model.
DIGIT_ZERO = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]

PREDICT_EXAMPLE: dict[str, Any] = {"model_id": "<model_id of a succeeded digits job>", "instances": [DIGIT_ZERO]}


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [PREDICT_EXAMPLE], **exactly_one_of("model_id", "model")},
    )

    model_id: str | None = Field(default=None, min_length=1, description="Id of a trained model; or give `model`.")
    model: str | None = Field(
        default=None,
        min_length=1,
        description="A model's name (its latest version) or `name@version`; or give `model_id`.",
        examples=["digits relu + adam@2"],
    )
    instances: list[Any] = Field(
        min_length=1,
        description="Inputs, one per row, each of the model's input shape, in the dataset's units.",
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    name: str = Field(description="The model's name.")
    version: int = Field(description="Which version of that name answered.")
    predictions: list[list[float]] = Field(description="The model's outputs, one row per instance.")
    classes: list[int] = Field(description="The predicted class of each instance.")
    labels: list[str] | None = Field(default=None, description="Class names, when the dataset has them.")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
