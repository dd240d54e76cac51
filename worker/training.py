"""Train one job: claim it, load its dataset, build and fit its model, store the model, publish it.

Every finished epoch is checkpointed into the model store, so a job whose worker died resumes after its last
checkpoint instead of starting over (``worker.checkpoints`` is the file's layout).

Plain functions, called by the Celery task and directly by tests. Importing this module loads TensorFlow, so only
pool children import it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import tempfile
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import keras
import numpy as np
from billiard.exceptions import SoftTimeLimitExceeded
from sklearn.model_selection import train_test_split
from sqlalchemy.orm import Session

from service import exports, jobs
from service.datasets.builtin import DatasetInfo, DatasetUnavailableError, LoadedDataset
from service.datasets.loading import load_training_data
from service.db import ModelRow, new_id, retried, session_scope
from service.keras_build import (
    build_model,
    compile_model,
    labels_for_loss,
    runnable_model,
    summarize,
    training_data_bytes,
)
from service.logs import job_context
from service.serving import litert
from service.settings import Settings
from service.spec import CheckpointCallback, EarlyStoppingCallback, TrainRequest
from service.store import (
    StoreError,
    checkpoint_name,
    model_key,
    model_store,
    remove_checkpoint,
    write_checkpoint,
)
from worker import checkpoints
from worker.tensorboard import TensorBoardLog
from worker.trials import TrialPruning, trial_pruning

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Splits:
    x_train: np.ndarray[Any, Any]
    y_train: np.ndarray[Any, Any]
    x_test: np.ndarray[Any, Any] | None
    y_test: np.ndarray[Any, Any] | None
    # What fit(validation_data=...) is given, when the request asks for it.
    x_val: np.ndarray[Any, Any] | None = None
    y_val: np.ndarray[Any, Any] | None = None


def _split(
    x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], size: float, random_state: int | None, stratify: bool
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(x_kept, x_held, y_kept, y_held), as ``train_test_split`` makes them."""
    x_kept, x_held, y_kept, y_held = train_test_split(
        x, y, test_size=size, random_state=random_state, stratify=y if stratify else None
    )
    return x_kept, x_held, y_kept, y_held


def _as_float32(x: np.ndarray[Any, Any], rescale: float | None) -> np.ndarray[Any, Any]:
    # One float32 array, straight from the dataset's own numbers (uint8 pixels make no float copy first).
    if rescale is not None:
        scaled: np.ndarray[Any, Any] = x * np.float32(rescale)
        return scaled
    return x.astype(np.float32, copy=False)


def one_hot(x: np.ndarray[Any, Any], words: int) -> np.ndarray[Any, Any]:
    """Word indexes (rows, maxlen) as float32 one-hot vectors (rows, maxlen, words), as
    ``keras.utils.to_categorical`` makes them (padding, index 0, is a vector too)."""
    indexes = np.asarray(x, dtype=np.int64)
    if indexes.size and (indexes.min() < 0 or indexes.max() >= words):
        raise ValueError(f"word indexes run from {indexes.min()} to {indexes.max()}, outside 0 to {words - 1}")
    out = np.zeros((*indexes.shape, words), dtype=np.float32)
    np.put_along_axis(out, indexes[..., None], 1.0, axis=-1)
    return out


def prepare(request: TrainRequest, data: LoadedDataset, num_classes: int, one_hot_words: int | None = None) -> Splits:
    """Apply the request's held-out splits and preprocessing, in the order its script does; encode labels as its
    loss expects; with ``one_hot_words``, word indexes become one-hot vectors that wide."""
    spec = request.dataset
    x, y, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    if spec.test_size is not None:
        x, x_test, y, y_test = _split(x, y, spec.test_size, spec.random_state, spec.stratify)
    x_val = y_val = None
    validation = request.fit.validation_data
    if validation is not None and validation != "test":
        x, x_val, y, y_val = _split(x, y, validation.size, validation.random_state, validation.stratify)

    def inputs(split: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """One split's inputs as the model takes them: reshaped (views of the same rows, as the learner's
        x.reshape(-1, 28, 28, 1)), as one-hot vectors, then float32 after the rescale."""
        if spec.reshape is not None:
            split = split.reshape(len(split), *spec.reshape)
        if one_hot_words is not None:
            split = one_hot(split, one_hot_words)
        return _as_float32(split, spec.rescale)

    def labels(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return labels_for_loss(values, request.compile, num_classes)

    test = None if x_test is None or y_test is None else (inputs(x_test), labels(y_test))
    held = None if x_val is None or y_val is None else (inputs(x_val), labels(y_val))
    val = test if validation == "test" else held
    return Splits(
        inputs(x),
        labels(y),
        None if test is None else test[0],
        None if test is None else test[1],
        None if val is None else val[0],
        None if val is None else val[1],
    )


class TrainingDataTooLargeError(Exception):
    """The job's arrays would take more memory than a job may (a dataset that grew since it was checked)."""


def check_training_data(request: TrainRequest, data: LoadedDataset, info: DatasetInfo, limit: int) -> None:
    """Count what preparing the arrays will allocate before doing it, as the API did at submit: the samples as
    the model sees them (one-hot vectors are counted as wide as they become)."""
    rows = len(data.x_train) + (0 if data.x_test is None else len(data.x_test))
    shape = info.input_shape if request.dataset.one_hot else data.x_train.shape[1:]
    inputs, labels = training_data_bytes(
        rows=rows, input_shape=shape, compile_spec=request.compile, num_classes=info.num_classes
    )
    if inputs + labels > limit:
        raise TrainingDataTooLargeError(
            f"the job's arrays would take {inputs + labels:,} bytes (inputs {inputs:,}, labels {labels:,}); "
            f"a job may take {limit:,} (TRAINSERVE_MAX_TRAINING_DATA_BYTES)"
        )


def _finite(logs: dict[str, Any] | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in (logs or {}).items():
        number = float(value)
        out[key] = number if math.isfinite(number) else None
    return out


class EpochReporter(keras.callbacks.Callback):  # type: ignore[misc]
    """Writes each finished epoch (loss, metrics, val_*) to the job's record, while the job is this run's."""

    def __init__(self, run: JobRun) -> None:
        super().__init__()
        self.run = run
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.monotonic() - self.started
        run = self.run
        recorded = run.write(
            f"epoch {epoch + 1}",
            lambda session: jobs.record_epoch(
                session=session,
                job_id=run.job_id,
                worker_id=run.worker_id,
                attempt=run.attempt,
                epoch=epoch + 1,
                metrics=_finite(logs),
                seconds=seconds,
            ),
        )
        if recorded:
            run.recorded_epoch = epoch + 1
            if run.mlflow is not None:
                run.mlflow.epoch(epoch + 1, _finite(logs))
        else:
            run.request_stop("lost")


class LearningRateLog(keras.callbacks.Callback):  # type: ignore[misc]
    """Adds the learning rate the epoch ended with to its logs (``learning_rate``, as Keras' ReduceLROnPlateau
    logs it), so every epoch of the job's history has it, a schedule's or a plateau's."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class CheckpointWatch(keras.callbacks.Callback):  # type: ignore[misc]
    """Notes the epoch whose weights the checkpoint just kept: its ``best`` moved."""

    def __init__(self, checkpoint: Any) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.best_epoch: int | None = None
        self.best: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        best = float(self.checkpoint.best)
        if math.isfinite(best) and best != self.best:
            self.best, self.best_epoch = best, epoch + 1

    def checkpoint_state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def restore_checkpoint_state(self, values: dict[str, Any]) -> None:
        self.best, self.best_epoch = values["best"], values["best_epoch"]


class EpochCheckpoint(keras.callbacks.Callback):  # type: ignore[misc]
    """Keeps the job resumable. Before fit(), ``resume`` puts the job's checkpoint (if it has one) into the model;
    at the start of training the other callbacks get their state back (Keras' own reset theirs in
    ``on_train_begin``, so this callback comes after them); at the end of every epoch, after ``EpochReporter`` has
    recorded it, the training state is saved into the model store and recorded on the job, while the job is this
    attempt's and the checkpoint quota leaves room. Holds the job's whole history: the resumed epochs' logs and
    this attempt's."""

    def __init__(self, run: JobRun, callbacks: list[Any]) -> None:
        super().__init__()
        self.run = run
        self.callbacks = callbacks
        self.history: list[dict[str, float]] = []
        self.resumed: checkpoints.Checkpoint | None = None
        self._over_quota = False

    def resume(self, model: Any) -> int:
        """Load the job's checkpoint into ``model`` (built and compiled); returns the epochs it had finished, 0 for
        none. A checkpoint whose file is gone, is not the one recorded or does not fit starts the job over."""
        run = self.run
        record = run.checkpoint
        if record is None:
            return 0
        try:
            checkpoint = checkpoints.read(model_store(run.settings), record)
            checkpoints.restore_model(model, checkpoint, self.callbacks)
        except (StoreError, checkpoints.CheckpointError) as exc:
            log.warning("job %s: cannot resume after epoch %s, it starts over: %s", run.job_id, record["epoch"], exc)
            if not run.write(
                "start over",
                lambda session: jobs.start_over(
                    session=session, job_id=run.job_id, worker_id=run.worker_id, attempt=run.attempt
                ),
            ):
                raise JobStoppedError("lost") from None
            remove_checkpoint(model_store(run.settings), record["file"])
            run.checkpoint = run.resumed_from = None
            return 0
        self.resumed = checkpoint
        self.history = list(checkpoint.history)
        log.info("job %s: resumed after epoch %d", run.job_id, checkpoint.epoch)
        return checkpoint.epoch

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.resumed is not None:
            checkpoints.restore_callbacks(self.callbacks, self.resumed)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.history.append({key: float(value) for key, value in (logs or {}).items()})
        # Read before the stop reason: the lease thread sets its reason before it stops the model, so a stop seen
        # here with no reason is a callback's (early stopping), which the checkpoint keeps.
        stopped = bool(self.model.stop_training)
        if self.run.stop_reason is None:  # a job cancelled, timed out or taken over is not resumed by this attempt
            self._save(epoch + 1, stopped)

    def _save(self, epoch: int, stopped: bool) -> None:
        run = self.run
        settings = run.settings
        size = checkpoints.expected_bytes(self.model, self.callbacks)
        taken = run.write(
            "checkpoint quota", lambda session: jobs.checkpoint_bytes(session=session, excluding=run.job_id)
        )
        if taken + size > settings.checkpoint_quota_bytes:
            if not self._over_quota:
                log.warning(
                    "job %s: no checkpoint after epoch %d: its %d bytes and the %d of other jobs' would pass "
                    "TRAINSERVE_CHECKPOINT_QUOTA_BYTES (%d); it trains on without a new one until they fit",
                    run.job_id,
                    epoch,
                    size,
                    taken,
                    settings.checkpoint_quota_bytes,
                )
            self._over_quota = True
            return
        self._over_quota = False
        arrays = checkpoints.capture(
            self.model, self.callbacks, epoch=epoch, history=self.history, stopped=stopped
        ).arrays()
        store = model_store(settings)
        name = checkpoint_name(run.job_id, run.attempt, epoch)
        try:
            sha256, written = write_checkpoint(store, name, lambda f: checkpoints.write(arrays, f))
        except OSError:
            log.exception("job %s: could not write the checkpoint of epoch %d; it trains on", run.job_id, epoch)
            remove_checkpoint(store, name)
            return
        record = {
            "epoch": epoch,
            "attempt": run.attempt,
            "file": name,
            "sha256": sha256,
            "size_bytes": written,
            "resumed_from_epoch": run.resumed_from,
        }
        recorded = run.write(
            f"checkpoint of epoch {epoch}",
            lambda session: jobs.record_checkpoint(
                session=session, job_id=run.job_id, worker_id=run.worker_id, attempt=run.attempt, checkpoint=record
            ),
        )
        if not recorded:
            remove_checkpoint(store, name)
            run.request_stop("lost")
            return
        previous, run.checkpoint = run.checkpoint, record
        if previous is not None:
            remove_checkpoint(store, previous["file"])


@dataclass
class Callbacks:
    """The request's callbacks as Keras objects, between the job's own: what fit() is given, and what is read from
    them once it returns."""

    keras: list[Any]
    early_stopping: list[tuple[EarlyStoppingCallback, Any]]
    checkpoint: tuple[CheckpointCallback, CheckpointWatch, Path] | None
    # Last in ``keras``: resumes the job, checkpoints every epoch, and has the whole history once fit() returns.
    state: EpochCheckpoint
    # Writes the epochs this attempt recorded as TensorBoard event files, before each is checkpointed.
    tensorboard: TensorBoardLog
    # A trial of an experiment with a pruner: reports each epoch to the study, which may stop it there.
    pruning: TrialPruning | None = None

    @classmethod
    def build(cls, request: TrainRequest, run: JobRun, scratch: Path) -> Callbacks:
        built: list[Any] = [JobGuard(run), LearningRateLog()]
        early: list[tuple[EarlyStoppingCallback, Any]] = []
        checkpoint: tuple[CheckpointCallback, CheckpointWatch, Path] | None = None
        for spec in request.fit.callbacks:
            if isinstance(spec, CheckpointCallback):
                path = scratch / "best.weights.h5"
                keras_checkpoint = spec.build(str(path))
                watch = CheckpointWatch(keras_checkpoint)
                built += [keras_checkpoint, watch]
                checkpoint = (spec, watch, path)
                continue
            keras_callback = spec.build()
            built.append(keras_callback)
            if isinstance(spec, EarlyStoppingCallback):
                early.append((spec, keras_callback))
        built.append(EpochReporter(run))
        pruning = trial_pruning(run.settings, run.job_id, request)
        if pruning is not None:
            built.append(pruning)
        state = EpochCheckpoint(run, list(built))
        # Outside the checkpoint's callbacks (whose state it keeps), but before it: an epoch is on disk before its
        # checkpoint is recorded.
        tensorboard = TensorBoardLog(
            model_store(run.settings),
            run.settings.home / "tensorboard-staging",
            run.job_id,
            run.attempt,
            request.fit.tensorboard.histogram_freq,
            recorded=lambda epoch: run.recorded_epoch == epoch,
        )
        return cls([*built, tensorboard, state], early, checkpoint, state, tensorboard, pruning)

    def outcome(self, model: Any, epochs_run: int) -> dict[str, Any]:
        """How training ended, after fit() returned (``TrainingOutcome`` in the API); loads the checkpoint's
        weights into ``model`` when it kept an epoch, so the published model is that epoch's."""
        best_epoch: int | None = None
        monitor: str | None = None
        published = epochs_run
        for spec, callback in self.early_stopping:
            if best_epoch is None and math.isfinite(float(callback.best)):
                best_epoch, monitor = int(callback.best_epoch) + 1, spec.monitor
            if spec.restore_best_weights and callback.best_weights is not None:
                published = int(callback.best_epoch) + 1
        if self.checkpoint is not None:
            kept, watch, path = self.checkpoint
            best_epoch, monitor = watch.best_epoch, kept.monitor
            if watch.best_epoch is not None and path.is_file():
                model.load_weights(str(path))
                published = watch.best_epoch
        stopped = next(((spec, cb) for spec, cb in self.early_stopping if cb.stopped_epoch > 0), None)
        stopped_epoch = None if stopped is None else int(stopped[1].stopped_epoch) + 1
        stop_reason = None if stopped is None else _stop_reason(*stopped)
        if self.pruning is not None and self.pruning.pruned_epoch is not None:
            stopped_epoch, stop_reason = self.pruning.pruned_epoch, self.pruning.reason
        return {
            "epochs_run": epochs_run,
            "stopped_epoch": stopped_epoch,
            "stop_reason": stop_reason,
            "best_epoch": best_epoch,
            "monitor": monitor,
            "published_epoch": published,
        }


def _stop_reason(spec: EarlyStoppingCallback, callback: Any) -> str:
    """``early_stopping: val_loss did not improve for 2 epochs after epoch 59 (val_loss 0.0567605)``."""
    by = f" by more than {spec.min_delta:g}" if spec.min_delta else ""
    epochs = f"{spec.patience} epoch{'s' if spec.patience != 1 else ''}"
    best = f"epoch {int(callback.best_epoch) + 1} ({spec.monitor} {float(callback.best):.6g})"
    return f"early_stopping: {spec.monitor} did not improve{by} for {epochs} after {best}"


def train_step(model: Any, data: Any) -> Any:
    """Keras' own training step (``keras.Model.train_step`` on TensorFlow, through its public API), but for where the
    optimizer applies the gradients: in cross-replica context.

    In a replica context, Keras' TensorFlow optimizer sums the gradients over the replicas with
    ``ReplicaContext.all_reduce``, which wraps the sum in ``tf.custom_gradient``; in a traced function that registers
    a gradient function in TensorFlow's process-wide gradient registry, never removed, and the function holds the
    traced graph. Every job's training step was kept that way: about 4 MiB of a worker's memory per job, for the
    life of the process. Applied through ``merge_call``, the optimizer sees no replica context to sum over (there is
    one replica) and registers nothing; the arithmetic, and so every number, is the same.
    """
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        for metric in model.metrics:
            if metric.name == "loss":  # the mean loss over the epoch's samples, as Keras weighs it
                metric.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        loss = model.optimizer.scale_loss(loss)
    if model.trainable_weights:
        gradients = tape.gradient(loss, model.trainable_weights)
        tf.distribute.get_replica_context().merge_call(
            lambda _: model.optimizer.apply(gradients, model.trainable_weights)
        )
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


class JobStoppedError(Exception):
    """Training stopped early: the job was cancelled, ran out of time, or is no longer this worker's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobRun:
    """One attempt at one job in this process: its identity, its deadline, and a lease kept alive in the
    background. The lease thread also notices a cancel request, a lost lease or the time limit, and then stops
    training at its next batch by setting the model's ``stop_training``, which Keras checks after every step."""

    def __init__(self, job_id: str, settings: Settings) -> None:
        self.job_id = job_id
        self.settings = settings
        self.worker_id = worker_identity()
        self.attempt = 0  # set when the job is claimed
        self.deadline = time.monotonic() + settings.job_time_limit
        self.stop_reason: str | None = None
        self.model: Any = None
        # The job's recorded checkpoint (its record on the job row), which this attempt resumes from and replaces
        # with each of its own; and the epoch this attempt resumed after (None: it started from the first).
        self.checkpoint: dict[str, Any] | None = None
        self.resumed_from: int | None = None
        # The last epoch this attempt recorded on the job: what it may log elsewhere (TensorBoard, MLflow).
        self.recorded_epoch = 0
        # The job's MLflow run, when TRAINSERVE_MLFLOW_TRACKING_URI is set.
        self.mlflow: Any = None
        # The attempt's own local directory (the saved model, until MLflow has read it), from its claim on.
        self.scratch: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_lease, name=f"lease-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def attach(self, model: Any) -> None:
        """The model being fitted: the one to stop."""
        self.model = model
        if self.stop_reason is not None:
            model.stop_training = True

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.model is not None:
            self.model.stop_training = True

    def _keep_lease(self) -> None:
        # A third of the lease, so two renewals can fail before anyone takes the job over; at most a second, so
        # that a cancel request is acted on promptly.
        interval = min(self.settings.lease_seconds / 3, 1.0)
        while not self._stop.wait(interval):
            if time.monotonic() > self.deadline:
                self.request_stop("timeout")
            try:
                with session_scope(self.settings.database_url) as session:
                    ours, cancel = jobs.renew_lease(
                        session=session,
                        job_id=self.job_id,
                        worker_id=self.worker_id,
                        attempt=self.attempt,
                        lease_seconds=self.settings.lease_seconds,
                    )
            except Exception:
                log.exception("job %s: could not renew its lease", self.job_id)
                continue
            if cancel:
                self.request_stop("cancelled")
            if not ours:
                self.request_stop("lost")
                return

    def write(self, what: str, write: Callable[[Session], T]) -> T:
        """A write (or read) of this run's, tried again while the database is unreachable (``db.retried``)."""
        settings = self.settings
        return retried(
            settings.database_url, write, what=f"job {self.job_id}: {what}", seconds=settings.database_retry_seconds
        )

    def check(self) -> None:
        """Raise JobStoppedError if training must stop (or has stopped) early."""
        if self.stop_reason is None and time.monotonic() > self.deadline:
            self.stop_reason = "timeout"
        if self.stop_reason is not None:
            raise JobStoppedError(self.stop_reason)


class JobGuard(keras.callbacks.Callback):  # type: ignore[misc]
    """Hands the model to the job's lease thread, which stops it at the next batch when it must.

    No per-batch hook on purpose: Keras then waits for every batch's result to hand its logs over, which
    costs a good part of a small model's training time."""

    def __init__(self, run: JobRun) -> None:
        super().__init__()
        self.run = run

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.run.attach(self.model)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if time.monotonic() > self.run.deadline:
            self.run.request_stop("timeout")


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_alive(worker_id: str) -> bool:
    """Whether the process that holds a job still runs; only known for processes on this host."""
    host, _, pid = worker_id.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host: its lease tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_job(job_id: str, settings: Settings) -> str:
    """Train the job if this call wins the claim; returns the job's resulting status."""
    with job_context(job_id):
        return _run_job(job_id, settings)


def _run_job(job_id: str, settings: Settings) -> str:
    url = settings.database_url
    run = JobRun(job_id, settings)
    with session_scope(url) as session:
        claim = jobs.claim_job(
            session=session,
            job_id=job_id,
            worker_id=run.worker_id,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            holder_alive=holder_alive,
        )
        job = jobs.get_job(session=session, job_id=job_id)
        if claim is not jobs.Claim.CLAIMED or job is None:
            status = job.status if job else "missing"
            log.warning("job %s not started (%s, status %s)", job_id, claim.value, status)
            return str(status)
        request = TrainRequest.model_validate(job.spec)
        run.attempt = job.attempts
        run.checkpoint = job.checkpoint if jobs.checkpoint_file(job.checkpoint) else None
        run.resumed_from = jobs.resumed_from_epoch(job.checkpoint)
        mlflow_record = job.mlflow
        trial = (job.experiment_id, job.trial_number)
    log.info("job %s: attempt %d started in %s", job_id, run.attempt, run.worker_id)
    run.start()
    if settings.mlflow_tracking_uri:
        run.mlflow = _mlflow_run(run, request, mlflow_record, trial)
    # The attempt's local files (the saved model, before and after it is stored), until MLflow has read them.
    scratch = tempfile.TemporaryDirectory(prefix="trainserve-job-")
    run.scratch = Path(scratch.name)
    try:
        return _train(run, request)
    except JobStoppedError as stop:
        return _stopped(run, stop.reason)
    except SoftTimeLimitExceeded:
        return _stopped(run, "timeout")
    except DatasetUnavailableError as exc:
        return _fail(run, "DatasetUnavailable", str(exc))
    except TrainingDataTooLargeError as exc:
        return _fail(run, "TrainingDataTooLarge", str(exc))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return _fail(run, type(exc).__name__, str(exc) or repr(exc))
    finally:
        run.stop()
        if run.mlflow is not None:
            run.mlflow.close(settings.mlflow_timeout)
        scratch.cleanup()
        keras.backend.clear_session()


def _mlflow_run(
    run: JobRun, request: TrainRequest, record: dict[str, Any] | None, trial: tuple[str | None, int | None]
) -> Any:
    """The job's MLflow run (the one its record names, when an earlier attempt started it); None when MLflow
    cannot even be set up here, which is logged and recorded on the job."""
    try:
        from worker.mlflow_log import MlflowRun
    except ImportError as exc:
        message = f"MLflow is not installed in this worker (pip install 'trainserve[mlflow]'): {exc}"
        log.warning("job %s: %s", run.job_id, message)
        with session_scope(run.settings.database_url) as session:
            jobs.record_mlflow(session=session, job_id=run.job_id, values={"error": message})
        return None
    tags = {"trainserve.job_id": run.job_id}
    experiment_id, number = trial
    if experiment_id is not None:
        tags |= {"trainserve.experiment_id": experiment_id, "trainserve.trial": str(number)}
    return MlflowRun(
        run.settings,
        job_id=run.job_id,
        run_name=request.name or request.model.name or run.job_id,
        spec=request.model_dump(mode="json"),
        record=record,
        tags=tags,
    )


def _ended(run: JobRun) -> None:
    """This attempt has ended the job: its checkpoint file goes (the record no longer names it)."""
    if run.checkpoint is not None:
        remove_checkpoint(model_store(run.settings), run.checkpoint["file"])
        run.checkpoint = None


def _stopped(run: JobRun, reason: str) -> str:
    if reason == "cancelled":
        cancelled = run.write(
            "cancelled",
            lambda session: jobs.finish_cancelled(
                session=session,
                job_id=run.job_id,
                worker_id=run.worker_id,
                attempt=run.attempt,
                resumed_from_epoch=run.resumed_from,
            ),
        )
        if cancelled:
            _ended(run)
            if run.mlflow is not None:
                run.mlflow.finish("KILLED")
        log.info("job %s cancelled", run.job_id)
        return "cancelled"
    if reason == "timeout":
        limit = run.settings.job_time_limit
        return _fail(run, "timeout", f"the job ran past its time limit of {limit:g} s (TRAINSERVE_JOB_TIME_LIMIT)")
    log.warning("job %s was taken over by another worker; this attempt stops", run.job_id)
    return "lost"


def _fail(run: JobRun, error_type: str, message: str) -> str:
    failed = run.write(
        "failed",
        lambda session: jobs.fail_job(
            session=session,
            job_id=run.job_id,
            worker_id=run.worker_id,
            attempt=run.attempt,
            error_type=error_type,
            message=message,
            resumed_from_epoch=run.resumed_from,
        ),
    )
    if failed:
        _ended(run)
        if run.mlflow is not None:
            run.mlflow.finish("FAILED")
    log.info("job %s failed: %s: %s", run.job_id, error_type, message)
    return "failed"


def _train(run: JobRun, request: TrainRequest) -> str:
    job_id, settings = run.job_id, run.settings
    # Fresh layer names for this job's model. The full clear_session(), whose garbage collection over TensorFlow's
    # heap takes a fifth of a second, is run_job's, after every job, where no one is waiting for it.
    keras.backend.clear_session(free_memory=False)
    if request.fit.seed is not None:
        # As the book's notebooks start: the same seed gives the same numbers, run after run. Determinism stays on
        # for the rest of the process (TensorFlow has no public way back), which costs CPU kernels next to nothing.
        import tensorflow as tf

        keras.utils.set_random_seed(request.fit.seed)
        tf.config.experimental.enable_op_determinism()
    info, data = load_training_data(request.dataset, settings)
    check_training_data(request, data, info, settings.max_training_data_bytes)
    splits = prepare(request, data, info.num_classes, info.vocabulary_size if request.dataset.one_hot else None)
    run.check()

    display = build_model(request.model)
    summary = summarize(display)  # the user's names, before compile, as model.summary() reads in a notebook
    model = runnable_model(request.model, display)
    execution = compile_model(model, request.compile, request.fit, rows=len(splits.x_train))
    model.train_step = types.MethodType(train_step, model)
    if not run.write(
        "execution",
        lambda session: jobs.record_execution(
            session=session,
            job_id=job_id,
            worker_id=run.worker_id,
            attempt=run.attempt,
            execution=dataclasses.asdict(execution),
        ),
    ):
        raise JobStoppedError("lost")
    log.info("job %s: %d steps per execution, XLA %s", job_id, execution.steps_per_execution, execution.jit_compile)
    with tempfile.TemporaryDirectory(prefix="trainserve-job-") as scratch:
        callbacks = Callbacks.build(request, run, Path(scratch))
        resumed_record = run.checkpoint
        initial_epoch = callbacks.state.resume(model)
        resumed = callbacks.state.resumed
        callbacks.tensorboard.resume(
            epochs=initial_epoch,
            from_attempt=None if resumed_record is None else resumed_record["attempt"],
            history=callbacks.state.history,
        )
        if run.mlflow is not None and initial_epoch:
            run.mlflow.resume([_finite(logs) for logs in callbacks.state.history[:initial_epoch]])
        # A job its early stopping ended at the checkpoint's epoch trains no further: fit() then runs no epoch,
        # only its callbacks' ends (early stopping putting its best weights back), as they ran in the first place.
        epochs = initial_epoch if resumed is not None and resumed.stopped else request.fit.epochs
        validation = None if splits.x_val is None else (splits.x_val, splits.y_val)
        try:
            model.fit(
                splits.x_train,
                splits.y_train,
                epochs=epochs,
                initial_epoch=initial_epoch,
                batch_size=request.fit.batch_size,
                validation_split=request.fit.validation_split,
                validation_data=validation,
                shuffle=request.fit.shuffle,
                callbacks=callbacks.keras,
                verbose=0,
            )
        finally:
            callbacks.tensorboard.close()
        run.check()
        history = callbacks.state.history  # every epoch of the job, those before a resume too
        outcome = callbacks.outcome(model, len(history))
    evaluation = None
    if splits.x_test is not None and splits.y_test is not None:
        scores = model.evaluate(splits.x_test, splits.y_test, batch_size=256, verbose=0, return_dict=True)
        evaluation = _finite(scores)
    # The published epoch's loss and metrics: the last epoch's, or the best one's when that is what is published.
    published = outcome["published_epoch"]
    metrics = _finite(history[published - 1]) if published else {}

    model_id = new_id()
    store = model_store(settings)
    final = model_key(model_id)
    made: list[str] = [final]
    assert run.scratch is not None  # made when the job was claimed
    saved = run.scratch / final
    try:
        model.save(saved)
        sha256, size = store.put_file(final, saved), saved.stat().st_size
        exported = exports.write_exports(
            model,
            store=store,
            model_id=model_id,
            input_shape=tuple(request.model.input_shape),
            rescale=request.dataset.rescale,
            litert_off=litert.LITERT_OFF if settings.predict_litert == "never" else None,
        )
        made += exported.files
        row = ModelRow(
            id=model_id,
            name=request.name or request.model.name or f"model-{model_id[:8]}",
            job_id=job_id,
            spec=request.model_dump(mode="json"),
            dataset=request.dataset.model_dump(mode="json"),
            input_shape=list(request.model.input_shape),
            class_names=list(info.class_names) if info.class_names else None,
            metrics=metrics,
            evaluation=evaluation,
            summary=summary,
            keras_names={"model": model.name, "layers": [layer.name for layer in model.layers]},
            path=final,
            sha256=sha256,
            size_bytes=size,
            litert=exported.litert,
            exports=exported.exports,
            text=info.text,
        )
        published = run.write(
            "succeeded",
            lambda session: jobs.complete_job(
                session=session,
                job_id=job_id,
                worker_id=run.worker_id,
                attempt=run.attempt,
                model=row,
                evaluation=evaluation,
                training=outcome,
                resumed_from_epoch=run.resumed_from,
            ),
        )
    except BaseException:
        for key in made:
            store.delete(key)
        raise
    if not published:
        # Cancelled while saving, or no longer this worker's job: keep no model for it.
        for key in made:
            store.delete(key)
        ours = run.write(
            "still holds",
            lambda session: jobs.still_holds(
                session=session, job_id=job_id, worker_id=run.worker_id, attempt=run.attempt
            ),
        )
        log.warning("job %s: model discarded, the job was %s meanwhile", job_id, "cancelled" if ours else "taken over")
        return _stopped(run, "cancelled" if ours else "lost")
    _ended(run)
    if run.mlflow is not None:
        run.mlflow.finish(
            "FINISHED", evaluation=evaluation, model_file=saved, model=(row.id, row.name, int(row.version))
        )
    log.info("job %s succeeded: model %s", job_id, model_id)
    return "succeeded"
