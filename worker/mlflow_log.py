"""A job as an MLflow run, and its published model as a version in MLflow's model registry.

Imported only when ``TRAINSERVE_MLFLOW_TRACKING_URI`` is set. The run gets the request's fields as params (by
JSON path, ``model.layers.1.units``), every epoch the attempt recorded as metrics at ``step=epoch``, the evaluation
(``evaluation_<name>``), the ``.keras`` file as the artifact ``model/``, and tags naming the job (``trainserve.job_id``)
and its model. The job's record keeps the run's id (``mlflow.run_id``): an attempt that resumes the job goes on in
the same run, logging the epochs up to its checkpoint the run does not have yet.

Everything is sent from one background thread per job, in order, so training never waits for MLflow. A call that
fails (MLflow refused it, or its server did not answer within MLflow's own HTTP timeout and retries) is logged,
recorded on the job as ``mlflow.error`` (the last such error), and the rest goes on; once the job has ended its
worker waits at most ``TRAINSERVE_MLFLOW_TIMEOUT`` for the thread before it takes the next job.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from service import jobs, registry
from service.db import session_scope
from service.settings import Settings

# MLflow's own HTTP knobs (read at each request), unless the deployment set them: a server that does not answer
# costs seconds, not the minutes of MLflow's defaults.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")

log = logging.getLogger(__name__)

# MLflow takes at most this many params, and params this long, per call.
PARAMS_PER_CALL = 100
MAX_PARAM_CHARS = 6000
MAX_ERROR_CHARS = 1000


def flatten(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """A request's fields as (JSON path with dots, value as text: a string as it is, anything else as JSON), leaves
    only; lists of numbers or names stay one value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        for index, item in enumerate(value):
            yield from flatten(item, f"{path}.{index}")
    elif value is not None:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        yield path, text[:MAX_PARAM_CHARS]


def _now() -> int:
    return int(time.time() * 1000)


class MlflowRun:
    """One job's MLflow run, written from its own thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        job_id: str,
        run_name: str,
        spec: dict[str, Any],
        record: dict[str, Any] | None,
        tags: dict[str, str],
    ) -> None:
        self.settings = settings
        self.job_id = job_id
        self.client = MlflowClient(settings.mlflow_tracking_uri)
        self.run_id: str | None = (record or {}).get("run_id")
        self._tasks: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"mlflow-{job_id}", daemon=True)
        self._thread.start()
        self._submit("start the run", lambda: self._open(run_name, spec, tags))

    # --- what the training thread calls: each only queues work --------------------------------------------------

    def epoch(self, epoch: int, logs: dict[str, Any]) -> None:
        metrics = _metrics(logs, epoch)
        self._submit(f"log epoch {epoch}", lambda: self._log(metrics=metrics))

    def resume(self, history: list[dict[str, Any]]) -> None:
        """The epochs an attempt resumes after: those the run lacks are logged (an earlier attempt may have died
        before its thread sent them)."""
        now = _now()
        self._submit("log the epochs resumed after", lambda: self._fill(history, now))

    def finish(
        self,
        status: str,
        *,
        evaluation: dict[str, Any] | None = None,
        model_file: Path | None = None,
        model: tuple[str, str, int] | None = None,
    ) -> None:
        """The job ended with ``status`` (FINISHED, FAILED, KILLED); with its published model (file, and id, name,
        version), which is logged and registered."""
        if evaluation:
            metrics = [Metric(f"evaluation_{k}", float(v), _now(), 0) for k, v in evaluation.items() if v is not None]
            self._submit("log the evaluation", lambda: self._log(metrics=metrics))
        if model_file is not None and model is not None:
            model_id, name, version = model
            self._submit("log the model", lambda: self._artifact(model_file, model_id))
            self._submit("end the run", lambda: self._end(status))
            self._submit("register the model", lambda: self._register(model_id, name, version))
        else:
            self._submit("end the run", lambda: self._end(status))

    def close(self, timeout: float) -> None:
        """Wait for what is queued, at most ``timeout`` seconds."""
        self._tasks.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._failed(
                "finish",
                TimeoutError(f"MLflow had not taken everything after {timeout:g} s (TRAINSERVE_MLFLOW_TIMEOUT)"),
            )

    # --- the thread ---------------------------------------------------------------------------------------------

    def _submit(self, what: str, task: Callable[[], None]) -> None:
        self._tasks.put((what, task))

    def _work(self) -> None:
        while (item := self._tasks.get()) is not None:
            what, task = item
            if self.run_id is None and what != "start the run":
                continue  # no run to log to: the error that kept it from starting is recorded
            try:
                task()
            except Exception as exc:
                self._failed(what, exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        message = f"MLflow: could not {what}: {type(exc).__name__}: {exc}".strip()[:MAX_ERROR_CHARS]
        log.warning("job %s: %s; training goes on without it", self.job_id, message)
        try:
            with session_scope(self.settings.database_url) as session:
                jobs.record_mlflow(session=session, job_id=self.job_id, values={"error": message})
        except Exception:
            log.exception("job %s: could not record MLflow's error", self.job_id)

    def _open(self, run_name: str, spec: dict[str, Any], tags: dict[str, str]) -> None:
        client = self.client
        if self.run_id is not None:
            client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self._experiment()
            run = client.create_run(experiment, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            with session_scope(self.settings.database_url) as session:
                jobs.record_mlflow(
                    session=session, job_id=self.job_id, values={"run_id": self.run_id, "experiment_id": experiment}
                )
        params = [Param(key, value) for key, value in flatten(spec)]
        for start in range(0, len(params), PARAMS_PER_CALL):
            self._log(params=params[start : start + PARAMS_PER_CALL])

    def _experiment(self) -> str:
        name = self.settings.mlflow_experiment
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException:  # made meanwhile by another worker
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _log(
        self, *, metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = ()
    ) -> None:
        assert self.run_id is not None
        self.client.log_batch(self.run_id, metrics=list(metrics), params=list(params), tags=list(tags))

    def _fill(self, history: list[dict[str, Any]], now: int) -> None:
        assert self.run_id is not None
        logged = {metric.step for metric in self.client.get_metric_history(self.run_id, "loss")}
        metrics = [
            m for epoch, logs in enumerate(history, 1) if epoch not in logged for m in _metrics(logs, epoch, now)
        ]
        for start in range(0, len(metrics), 1000):
            self._log(metrics=metrics[start : start + 1000])

    def _artifact(self, model_file: Path, model_id: str) -> None:
        assert self.run_id is not None
        self.client.log_artifact(self.run_id, str(model_file), artifact_path="model")
        self._log(tags=[RunTag("trainserve.model_id", model_id)])

    def _end(self, status: str) -> None:
        assert self.run_id is not None
        self.client.set_terminated(self.run_id, status)

    def _register(self, model_id: str, name: str, version: int) -> None:
        assert self.run_id is not None
        try:
            try:
                self.client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            registered = self.client.create_model_version(
                name,
                source=f"runs:/{self.run_id}/model",
                run_id=self.run_id,
                tags={"trainserve.model_id": model_id, "trainserve.version": str(version)},
                await_creation_for=0,
            )
        except Exception as exc:
            with session_scope(self.settings.database_url) as session:
                registry.record_mlflow(
                    session=session, model_id=model_id, values={"error": f"{type(exc).__name__}: {exc}"[:1000]}
                )
            raise
        with session_scope(self.settings.database_url) as session:
            registry.record_mlflow(
                session=session, model_id=model_id, values={"name": name, "version": str(registered.version)}
            )


def _metrics(logs: dict[str, Any], epoch: int, now: int | None = None) -> list[Metric]:
    now = _now() if now is None else now
    return [
        Metric(key, float(value), now, epoch) for key, value in logs.items() if value is not None and key != "epoch"
    ]
