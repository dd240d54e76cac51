"""Train one job: claim it, load its dataset, build and fit its model, store the model, publish it.

Plain functions, called by the Celery task and directly by tests. Importing this module loads TensorFlow, so only
pool children import it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from billiard.exceptions import SoftTimeLimitExceeded
from sklearn.model_selection import train_test_split

from service import jobs
from service.datasets import DatasetUnavailableError, LoadedDataset
from service.db import ModelRow, new_id, session_scope
from service.keras_build import build_model, compile_model, encode_labels, runnable_copy, summarize
from service.settings import Settings
from service.spec import TrainRequest
from service.store import model_path, publish, temporary_path
from service.uploads import load_training_data

log = logging.getLogger(__name__)


@dataclass
class Splits:
    x_train: np.ndarray[Any, Any]
    y_train: np.ndarray[Any, Any]
    x_test: np.ndarray[Any, Any] | None
    y_test: np.ndarray[Any, Any] | None


def prepare(request: TrainRequest, data: LoadedDataset, num_classes: int) -> Splits:
    """Apply the request's preprocessing and held-out split; encode labels as its loss expects."""
    spec = request.dataset
    x, y, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    if spec.test_size is not None:
        x, x_test, y, y_test = train_test_split(
            x, y, test_size=spec.test_size, random_state=spec.random_state, stratify=y
        )
    if spec.rescale is not None:
        x = x * np.float32(spec.rescale)
        x_test = None if x_test is None else x_test * np.float32(spec.rescale)
    encode = request.compile
    return Splits(
        x,
        encode_labels(y, encode, num_classes),
        x_test,
        None if y_test is None else encode_labels(y_test, encode, num_classes),
    )


def _finite(logs: dict[str, Any] | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in (logs or {}).items():
        number = float(value)
        out[key] = number if math.isfinite(number) else None
    return out


class EpochReporter(keras.callbacks.Callback):  # type: ignore[misc]
    """Writes each finished epoch (loss, metrics, val_*) to the job's record."""

    def __init__(self, job_id: str, database_url: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.database_url = database_url

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        with session_scope(self.database_url) as session:
            jobs.record_epoch(session=session, job_id=self.job_id, epoch=epoch + 1, metrics=_finite(logs))


def run_job(job_id: str, settings: Settings) -> str:
    """Train the job if this call wins the claim; returns the job's resulting status."""
    url = settings.database_url
    with session_scope(url) as session:
        if not jobs.claim_job(session=session, job_id=job_id):
            job = jobs.get_job(session=session, job_id=job_id)
            status = job.status if job else "missing"
            log.warning("job %s not claimed (status %s): another delivery has it or it has ended", job_id, status)
            return status
        job = jobs.get_job(session=session, job_id=job_id)
        assert job is not None
        request = TrainRequest.model_validate(job.spec)
    log.info("job %s: training started", job_id)
    try:
        return _train(job_id, request, settings)
    except SoftTimeLimitExceeded:
        return _fail(url, job_id, "timeout", f"the job ran past the time limit of {settings.job_time_limit} s")
    except DatasetUnavailableError as exc:
        return _fail(url, job_id, "DatasetUnavailable", str(exc))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return _fail(url, job_id, type(exc).__name__, str(exc) or repr(exc))
    finally:
        keras.backend.clear_session()


def _fail(url: str, job_id: str, error_type: str, message: str) -> str:
    with session_scope(url) as session:
        jobs.fail_job(session=session, job_id=job_id, error_type=error_type, message=message)
    log.info("job %s failed: %s: %s", job_id, error_type, message)
    return "failed"


def _train(job_id: str, request: TrainRequest, settings: Settings) -> str:
    keras.backend.clear_session()
    if request.fit.seed is not None:
        keras.utils.set_random_seed(request.fit.seed)
    info, data = load_training_data(request.dataset, settings)
    splits = prepare(request, data, info.num_classes)

    display = build_model(request.model)
    summary = summarize(display)  # the user's names, before compile, as model.summary() reads in a notebook
    model = runnable_copy(request.model, display)
    compile_model(model, request.compile)
    history = model.fit(
        splits.x_train,
        splits.y_train,
        epochs=request.fit.epochs,
        batch_size=request.fit.batch_size,
        validation_split=request.fit.validation_split,
        shuffle=request.fit.shuffle,
        callbacks=[EpochReporter(job_id, settings.database_url)],
        verbose=0,
    )
    evaluation = None
    if splits.x_test is not None and splits.y_test is not None:
        scores = model.evaluate(splits.x_test, splits.y_test, batch_size=256, verbose=0, return_dict=True)
        evaluation = _finite(scores)
    metrics = _finite({key: values[-1] for key, values in history.history.items()})

    model_id = new_id()
    store = settings.store_dir
    temp = temporary_path(store)
    final = model_path(store, model_id)
    try:
        model.save(temp)
        sha256 = publish(temp, final)
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
            path=final.name,
            sha256=sha256,
            size_bytes=final.stat().st_size,
        )
        with session_scope(settings.database_url) as session:
            published = jobs.complete_job(session=session, job_id=job_id, model=row, evaluation=evaluation)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    finally:
        temp.unlink(missing_ok=True)
    if not published:
        # The job left `running` while it trained (cancelled or failed elsewhere): keep no model for it.
        final.unlink(missing_ok=True)
        log.warning("job %s ended elsewhere while training; its model was discarded", job_id)
        return "discarded"
    log.info("job %s succeeded: model %s", job_id, model_id)
    return "succeeded"
