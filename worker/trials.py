"""A trial's side of its experiment while it trains: each epoch's watched metric goes to the study, and the study's
pruner may stop the trial there.

Optuna's own storage API throughout (``set_trial_intermediate_value``, ``get_trial``) and the pruner's ``prune``:
the trial is a job like any other, trained by ``worker.training``, and this is one more callback of its fit.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
from sqlalchemy import select

from service import experiments
from service.db import ExperimentRow, JobRow, session_scope
from service.settings import Settings
from service.spec import TrainRequest
from service.spec.experiment import ExperimentRequest

log = logging.getLogger(__name__)


class TrialPruning(keras.callbacks.Callback):  # type: ignore[misc]
    """Reports the trial's watched metric to its study after every epoch, and stops training when the pruner says
    the trial has fallen behind the others; ``pruned_epoch`` and ``reason`` then say where and why."""

    def __init__(self, study: Any, storage: Any, trial_id: int, monitor: str, kind: str) -> None:
        super().__init__()
        self.study = study
        self.storage = storage
        self.trial_id = trial_id
        self.monitor = monitor
        self.kind = kind
        self.pruned_epoch: int | None = None
        self.reason: str | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        storage = self.storage
        try:
            storage.set_trial_intermediate_value(self.trial_id, epoch + 1, float(value))
            prune = self.study.pruner.prune(self.study, storage.get_trial(self.trial_id))
        except Exception as exc:  # the study is told elsewhere; a trial that cannot report trains on
            log.warning("trial %d: could not report epoch %d to its study: %s", self.trial_id, epoch + 1, exc)
            return
        if prune:
            self.pruned_epoch = epoch + 1
            self.reason = (
                f"{experiments.STOP_PRUNED} by the {self.kind.replace('_', ' ')} pruner at epoch {epoch + 1}: "
                f"{self.monitor} {float(value):.6g} fell behind the other trials'"
            )
            self.model.stop_training = True


def trial_pruning(settings: Settings, job_id: str, request: TrainRequest) -> TrialPruning | None:
    """The pruning callback of a job that is a trial of an experiment with a pruner; None for any other job."""
    url = settings.database_url
    with session_scope(url) as session:
        found = session.execute(
            select(JobRow.experiment_id, JobRow.trial_number).where(JobRow.id == job_id)
        ).one_or_none()
        if found is None or found[0] is None:
            return None
        row = session.get(ExperimentRow, found[0])
        if row is None:
            return None
        experiment = ExperimentRequest.model_validate(row.spec)
        if experiment.pruner is None:
            return None
        study = experiments.study(row, experiment, url)
    storage = experiments.storage(url)
    study_id = storage.get_study_id_from_name(row.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, found[1] or 0)
    return TrialPruning(study, storage, trial_id, experiments.monitored(experiment, request), experiment.pruner.type)
