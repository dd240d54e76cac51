"""Response bodies of the experiment endpoints: an experiment, its trials (each a job) and their curves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.api.schemas import JobError, Progress
from service.db import ExperimentRow, ExperimentStatus, JobRow, JobStatus
from service.experiments import objective_value, was_pruned
from service.spec.experiment import ExperimentRequest, Objective

TrialState = Literal["queued", "running", "complete", "pruned", "failed", "cancelled", "refused"]


def trial_state(job: JobRow) -> TrialState:
    if job.error_type == "RefusedTrial":
        return "refused"
    if job.status == JobStatus.SUCCEEDED:
        return "pruned" if was_pruned(job) else "complete"
    state: TrialState = JobStatus(job.status).value  # type: ignore[assignment]
    return state


class ExperimentCreated(BaseModel):
    experiment_id: str
    status: ExperimentStatus
    trials: int = Field(description="Trials the experiment will ask for, in all.")
    checked: int = Field(
        description="Distinct trials dry-built at submit: all of a space of at most "
        "TRAINSERVE_EXPERIMENT_CHECK_LIMIT, else none (each trial is then checked before it is queued)."
    )


class TrialRead(BaseModel):
    number: int = Field(description="The trial's number in the study, from 0.")
    job_id: str
    state: TrialState = Field(
        description="'complete', 'pruned' (stopped by the pruner; its model is kept), 'refused' (its request "
        "could not run: see error), or the job's status."
    )
    params: dict[str, Any] = Field(description="Its values, by the JSON path each replaced.")
    objective: float | None = Field(description="The objective's value, once it has one.")
    progress: Progress
    last: dict[str, Any] | None = Field(description="Its last finished epoch.")
    stopped_epoch: int | None = Field(description="The epoch early stopping or the pruner stopped it at.")
    stop_reason: str | None
    model_id: str | None
    error: JobError | None

    @classmethod
    def from_row(cls, request: ExperimentRequest, job: JobRow, history: list[dict[str, Any]]) -> TrialRead:
        training = job.training or {}
        error = JobError(type=job.error_type, message=job.error_message or "") if job.error_type else None
        return cls(
            number=job.trial_number or 0,
            job_id=job.id,
            state=trial_state(job),
            params=job.trial_params or {},
            objective=objective_value(request, job, history),
            progress=Progress(epoch=job.epoch, epochs=job.epochs),
            last=history[-1] if history else None,
            stopped_epoch=training.get("stopped_epoch"),
            stop_reason=training.get("stop_reason"),
            model_id=job.model_id,
            error=error,
        )


class BestTrial(BaseModel):
    number: int
    job_id: str
    objective: float
    params: dict[str, Any]
    model_id: str | None


class ExperimentRead(BaseModel):
    experiment_id: str
    name: str
    status: ExperimentStatus
    created_at: datetime
    finished_at: datetime | None
    cancel_requested: bool
    search: str = Field(description="'grid', 'random' or 'tpe'.")
    objective: Objective
    pruner: str | None
    params: list[str] = Field(description="The space's paths: what each trial's `params` holds.")
    max_trials: int = Field(description="Trials the experiment asks for, in all.")
    max_parallel: int
    trials_asked: int
    counts: dict[str, int] = Field(description="Trials by state.")
    best: BestTrial | None = Field(description="The complete trial with the best objective so far.")
    published_model_id: str | None = Field(
        description="The best trial's model as published under the experiment's name, once it has ended."
    )
    error: str | None
    trials: list[TrialRead] | None = Field(description="Every trial, by number (left out of lists).")
    spec: dict[str, Any]

    @classmethod
    def from_row(
        cls, row: ExperimentRow, trials: list[JobRow] | None, history: dict[str, list[dict[str, Any]]] | None
    ) -> ExperimentRead:
        request = ExperimentRequest.model_validate(row.spec)
        read = (
            None
            if trials is None or history is None
            else [TrialRead.from_row(request, j, history[j.id]) for j in trials]
        )
        counts: dict[str, int] = {}
        best = None
        for trial in read or []:
            counts[trial.state] = counts.get(trial.state, 0) + 1
            if trial.job_id == row.best_job_id and trial.objective is not None:
                best = BestTrial(
                    number=trial.number,
                    job_id=trial.job_id,
                    objective=trial.objective,
                    params=trial.params,
                    model_id=trial.model_id,
                )
        return cls(
            experiment_id=row.id,
            name=row.name,
            status=ExperimentStatus(row.status),
            created_at=row.created_at,
            finished_at=row.finished_at,
            cancel_requested=row.cancel_requested,
            search=request.search.type,
            objective=request.objective,
            pruner=None if request.pruner is None else request.pruner.type,
            params=list(request.space),
            max_trials=request.trials_wanted(),
            max_parallel=request.max_parallel,
            trials_asked=row.trials_asked,
            counts=counts,
            best=best,
            published_model_id=row.published_model_id,
            error=row.error_message,
            trials=read,
            spec=row.spec,
        )


class ExperimentList(BaseModel):
    data: list[ExperimentRead]
    count: int


class Curve(BaseModel):
    number: int
    job_id: str
    state: TrialState
    epochs: list[int]
    values: list[float | None]


class Curves(BaseModel):
    metric: str
    trials: list[Curve]
