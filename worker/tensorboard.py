"""A job's TensorBoard event files, written as Keras' own ``keras.callbacks.TensorBoard`` lays them out (see
``service.tensorboard`` for where and why per attempt).

Events are ``tf.compat.v1.Event`` records in TFRecord files (``tf.io.TFRecordWriter``), their summaries in the form
``tf.summary.scalar`` and ``tf.summary.histogram`` write (tensor summaries with the scalars' and histograms'
plugin metadata), built here so that a worker needs no TensorBoard installed and each epoch is on disk (flushed)
before its checkpoint is recorded: an attempt that resumes from that checkpoint finds every epoch up to it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from service.store import Store
from service.tensorboard import RUNS, attempt_of, event_file_name, event_files, job_prefix

log = logging.getLogger(__name__)

# As TensorBoard's own histograms.
HISTOGRAM_BUCKETS = 30
VALIDATION_PREFIX = "val_"


def _metadata(plugin: str, data_class: str) -> Any:
    return json_format.ParseDict(
        {"dataClass": data_class, "pluginData": {"pluginName": plugin}}, tf.compat.v1.SummaryMetadata()
    )


SCALAR = _metadata("scalars", "DATA_CLASS_SCALAR")
HISTOGRAM = _metadata("histograms", "DATA_CLASS_TENSOR")


def scalar_value(tag: str, value: float) -> Any:
    return tf.compat.v1.Summary.Value(tag=tag, metadata=SCALAR, tensor=tf.make_tensor_proto(np.float32(value)))


def histogram_buckets(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``[left, right, count]`` per bucket, as TensorBoard's histogram summary makes them."""
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if data.size == 0:
        return np.zeros((HISTOGRAM_BUCKETS, 3))
    low, high = float(data.min()), float(data.max())
    if low == high:
        counts = np.zeros(HISTOGRAM_BUCKETS)
        counts[-1] = data.size
        return np.stack([np.full(HISTOGRAM_BUCKETS, low), np.full(HISTOGRAM_BUCKETS, low), counts], axis=1)
    width = (high - low) / HISTOGRAM_BUCKETS
    indexes = np.minimum(np.floor((data - low) / width).astype(np.int64), HISTOGRAM_BUCKETS - 1)
    counts = np.bincount(indexes, minlength=HISTOGRAM_BUCKETS).astype(np.float64)
    edges = np.linspace(low, high, HISTOGRAM_BUCKETS + 1)
    edges[-1] = high
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def histogram_value(tag: str, values: np.ndarray[Any, Any]) -> Any:
    tensor = tf.make_tensor_proto(histogram_buckets(values), dtype=tf.float64)
    return tf.compat.v1.Summary.Value(tag=tag, metadata=HISTOGRAM, tensor=tensor)


def epoch_scalars(logs: Mapping[str, float]) -> dict[str, list[Any]]:
    """One epoch's logs as Keras' callback writes them: per run, ``epoch_<name>`` (``val_`` taken off)."""
    runs: dict[str, list[Any]] = {run: [] for run in RUNS}
    for name, value in logs.items():
        if value is None or not np.isfinite(value):
            continue
        if name.startswith(VALIDATION_PREFIX):
            runs["validation"].append(scalar_value(f"epoch_{name[len(VALIDATION_PREFIX) :]}", value))
        else:
            runs["train"].append(scalar_value(f"epoch_{name}", value))
    return runs


class EventFile:
    """One event file, written record by record."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.writer = tf.io.TFRecordWriter(str(path))
        self.write(tf.compat.v1.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def write(self, record: bytes) -> None:
        self.writer.write(record)

    def summary(self, step: int, values: list[Any], wall_time: float | None = None) -> None:
        event = tf.compat.v1.Event(
            wall_time=time.time() if wall_time is None else wall_time,
            step=step,
            summary=tf.compat.v1.Summary(value=values),
        )
        self.write(event.SerializeToString())

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_events(path: Path) -> Iterator[Any]:
    """The events of a file, up to its end or to a record cut short (a writer that died mid-write)."""
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            yield tf.compat.v1.Event.FromString(record.numpy())
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as exc:
        log.warning("TensorBoard file %s read up to a damaged or missing record: %s", path.name, exc)


class TensorBoardLog(keras.callbacks.Callback):  # type: ignore[misc]
    """Writes each epoch this attempt recorded on the job (``recorded(epoch)``), before its checkpoint is saved;
    weight histograms every ``histogram_freq`` epochs, as ``keras.callbacks.TensorBoard(histogram_freq=...)``.

    In a local store the files are written in place; for an object store they are written in ``staging`` on local
    disk and each is stored again, whole, after every epoch (event files hold a few numbers per epoch)."""

    def __init__(
        self, store: Store, staging: Path, job_id: str, attempt: int, histogram_freq: int, recorded: Any
    ) -> None:
        super().__init__()
        self.prefix = job_prefix(job_id)
        in_place = store.local_directory(self.prefix)
        self.uploads = in_place is None
        self.directory = staging / job_id if in_place is None else in_place
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.histogram_freq = histogram_freq
        self.recorded = recorded
        self.started = int(time.time())
        self.files: dict[str, EventFile] = {}

    def resume(self, *, epochs: int, from_attempt: int | None, history: list[dict[str, float]]) -> None:
        """Before training: carry the job's first ``epochs`` epochs over from the files of ``from_attempt`` (the
        attempt whose checkpoint this one resumes from), writing from ``history`` any whose scalars are not there;
        then remove every other attempt's files."""
        if epochs:
            self._carry_over(epochs, from_attempt, history)
        self.remove_others()

    def _carry_over(self, epochs: int, from_attempt: int | None, history: list[dict[str, float]]) -> None:
        sources = event_files(self.store, self.job_id)
        carried: dict[str, EventFile] = {}
        found: set[tuple[str, int]] = set()
        for run, names in sources.items():
            for name in names:
                if attempt_of(name) != from_attempt:
                    continue
                for event in read_events(self._readable(run, name)):
                    if not event.HasField("summary") or event.step >= epochs:
                        continue
                    if run not in carried:
                        carried[run] = EventFile(self.directory / run / event_file_name(self.started, self.attempt, 0))
                    carried[run].write(event.SerializeToString())
                    if any(value.metadata.plugin_data.plugin_name == "scalars" for value in event.summary.value):
                        found.add((run, int(event.step)))
        for step, logs in enumerate(history[:epochs]):
            for run, values in epoch_scalars(logs).items():
                if values and (run, step) not in found:
                    if run not in carried:
                        carried[run] = EventFile(self.directory / run / event_file_name(self.started, self.attempt, 0))
                    carried[run].summary(step, values)
        for run, file in carried.items():
            file.close()
            self._upload(run, file)
        missing = sorted({step + 1 for run, step in _expected(history[:epochs]) - found})
        if missing:
            log.warning(
                "job %s: TensorBoard epochs %s written again from the checkpoint's history", self.job_id, missing
            )

    def remove_others(self) -> None:
        """Remove the event files of every other attempt at this job."""
        for run, names in event_files(self.store, self.job_id).items():
            for name in names:
                if attempt_of(name) != self.attempt:
                    self.store.delete(f"{self.prefix}/{run}/{name}")

    def _readable(self, run: str, name: str) -> Path:
        """A local path of a stored event file: where it is in a local store, else a copy fetched into staging."""
        path = self.directory / run / name
        if self.uploads:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.store.unchecked(f"{self.prefix}/{run}/{name}"))
        return path

    def _upload(self, run: str, file: EventFile) -> None:
        if self.uploads:
            self.store.put_file(f"{self.prefix}/{run}/{file.path.name}", file.path)

    def _file(self, run: str) -> EventFile:
        file = self.files.get(run)
        if file is None:
            name = event_file_name(self.started, self.attempt, 1)
            file = self.files[run] = EventFile(self.directory / run / name)
        return file

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.recorded(epoch + 1):
            return  # not this attempt's to log: the job is no longer its own
        try:
            for run, values in epoch_scalars(logs or {}).items():
                if values:
                    self._file(run).summary(epoch, values)
            if self.histogram_freq and epoch % self.histogram_freq == 0:
                histograms = [
                    histogram_value(f"{weight.path.replace(':', '_')}/histogram", keras.ops.convert_to_numpy(weight))
                    for layer in self.model.layers
                    for weight in layer.weights
                ]
                if histograms:
                    self._file("train").summary(epoch, histograms)
            for run, file in self.files.items():
                file.flush()
                self._upload(run, file)
        except Exception:  # a full disk, an object store out of reach: logs are not worth a job
            log.exception("job %s: could not write TensorBoard's epoch %d; training goes on", self.job_id, epoch + 1)

    def close(self) -> None:
        for file in self.files.values():
            file.close()
        self.files.clear()
        if self.uploads:  # every file is in the store by now
            shutil.rmtree(self.directory, ignore_errors=True)


def _expected(history: list[dict[str, float]]) -> set[tuple[str, int]]:
    return {(run, step) for step, logs in enumerate(history) for run, values in epoch_scalars(logs).items() if values}
