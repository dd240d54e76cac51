"""A training job: its record, its live epochs, waiting for it with a progress bar, its curves and its model."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast, overload

from trainserve import display
from trainserve.errors import JobCancelledError, JobFailedError, TrainServeError
from trainserve.records import (
    FINISHED,
    EpochEvent,
    JobCreated,
    JobError,
    JobEvent,
    JobRecord,
    JobState,
    StatusEvent,
    TrainingOutcome,
)

if TYPE_CHECKING:
    from trainserve.client import Client
    from trainserve.models import Model

STATUS_COLOURS = {"succeeded": "green", "failed": "red", "cancelled": "orange", "running": "#1f77b4"}


class History(Sequence[dict[str, Any]]):
    """A job's epochs, one row each (``epoch``, ``loss``, its metrics, their ``val_*``, ``learning_rate``), as
    ``GET /jobs/{id}`` has them. ``history["val_loss"]`` is one metric's values epoch by epoch, as Keras'
    ``History.history["val_loss"]``; ``pandas.DataFrame(history)`` is the table. A notebook shows it as a table."""

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.rows = [dict(row) for row in rows]

    @overload
    def __getitem__(self, key: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, key: slice) -> list[dict[str, Any]]: ...
    @overload
    def __getitem__(self, key: str) -> list[Any]: ...
    def __getitem__(self, key: int | slice | str) -> dict[str, Any] | list[dict[str, Any]] | list[Any]:
        if isinstance(key, str):
            if not any(key in row for row in self.rows):
                raise KeyError(f"{key!r} is not in the history; it has: {', '.join(self.metrics)}")
            return [row.get(key) for row in self.rows]
        return self.rows[key]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def metrics(self) -> list[str]:
        """What each epoch logged: loss first, then the metrics, then their val_*, then the learning rate."""
        return display.metric_names(self.rows)

    @property
    def epochs(self) -> list[int]:
        return [int(row["epoch"]) for row in self.rows]

    def _columns(self) -> tuple[list[str], list[list[Any]]]:
        columns = ["epoch", *self.metrics]
        return columns, [[row.get(c) for c in columns] for row in self.rows]

    def __str__(self) -> str:
        return display.text_table(*self._columns()) if self.rows else "(no epochs yet)"

    def __repr__(self) -> str:
        return f"History({len(self.rows)} epochs: {', '.join(self.metrics)})"

    def _repr_html_(self) -> str:
        return display.html_table(*self._columns()) if self.rows else "<i>no epochs yet</i>"


class Job:
    """A training job of the service: ``client.train(...)`` or ``client.job(id)`` gives one.

    ``job.status``, ``job.history`` and the other properties read the job's record, fetched again while the job
    has not ended; ``refresh()`` fetches it now. ``for epoch in job`` follows its epochs live, ``job.wait()`` with
    a progress bar; ``job.model`` is the trained model."""

    def __init__(self, client: Client, record: JobRecord, created: JobCreated | None = None) -> None:
        self._client = client
        self.record = record
        self.created = created
        """POST /train's answer when this client submitted the job: its ``build`` says what the dry build found
        (``total_params``, ``output_shape``, the memory it needs)."""

    @property
    def id(self) -> str:
        return self.record["job_id"]

    @property
    def name(self) -> str | None:
        return self.record["name"]

    def refresh(self) -> Job:
        """Fetch the job's record again (GET /jobs/{id})."""
        self.record = self._client.transport.json("GET", f"/jobs/{self.id}")
        return self

    def _current(self) -> JobRecord:
        if self.record["status"] not in FINISHED:
            self.refresh()
        return self.record

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self._current()["status"]

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    @property
    def history(self) -> History:
        return History(self._current()["history"])

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """The published model's metrics on the held-out split (``dataset.test_size``, or the dataset's own test
        split), once the job has succeeded."""
        return self._current()["evaluation"]

    @property
    def training(self) -> TrainingOutcome | None:
        """How training ended: ``epochs_run``, ``stopped_epoch`` and ``best_epoch``, the published one and why it
        stopped early (``stop_reason``), once the job has succeeded."""
        return self._current()["training"]

    @property
    def error(self) -> JobError | None:
        """Why the job failed: its ``type`` (``DatasetUnavailable``, ``WorkerLost``, …) and ``message``."""
        return self._current()["error"]

    @property
    def model_id(self) -> str | None:
        return self._current()["model_id"]

    @property
    def model(self) -> Model:
        """The model this job trained and published; the job must have succeeded."""
        record = self._current()
        if record["model_id"] is None:
            raise self._ended_error() if record["status"] in FINISHED else _no_model_yet(record)
        return self._client.model(record["model_id"])

    @property
    def spec(self) -> dict[str, Any]:
        """The request as the service recorded it (after validation: defaults filled in)."""
        return self.record["spec"]

    def events(self, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events from its stream (GET /jobs/{id}/events) until it ends: a StatusEvent for each status
        change, an EpochEvent for each finished epoch, from the first (a finished job tells all of them again).
        A stream the service ends early is resumed with Last-Event-ID; a job resumed on another worker after a
        checkpoint sends the epochs it trains again, under the new attempt."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event, data in self._client.transport.follow(
            f"/jobs/{self.id}/events",
            f"job {self.id}",
            lambda event, data: event == "status" and data.get("status") in FINISHED,
            deadline,
        ):
            if event == "status":
                state = cast(JobState, data)
                self.record = cast(JobRecord, {**self.record, **state})
                yield StatusEvent(state)
            elif event == "epoch":
                yield EpochEvent(data)
        self.refresh()  # the whole record of the job as it ended, its history with it

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Each finished epoch's history row, live, until the job ends: ``for epoch in job: print(epoch["loss"])``."""
        for event in self.events():
            if isinstance(event, EpochEvent):
                yield event.row

    def wait(self, progress: bool = True, timeout: float | None = None) -> Job:
        """Follow the job until it ends; with ``progress``, a live bar of its epochs with their metrics (a widget
        in Jupyter) and, at the end, the history as a table. Returns the job once it has succeeded; raises
        JobFailedError or JobCancelledError if it ended otherwise, and WaitTimeoutError after ``timeout`` seconds
        (the job goes on)."""
        if self.record["status"] not in FINISHED:
            if progress:
                self._follow_with_bar(timeout)
            else:
                for _ in self.events(timeout=timeout):
                    pass
            self.refresh()
        if progress:
            display.show(self.history)
        if self.record["status"] != "succeeded":
            raise self._ended_error()
        return self

    def _follow_with_bar(self, timeout: float | None) -> None:
        record = self.record
        bar = display.progress_bar(record["progress"]["epochs"] or None, self._label(record["status"]), "epoch")
        attempt = record["attempts"]
        try:
            for event in self.events(timeout=timeout):
                if isinstance(event, StatusEvent):
                    job = event.state
                    if job["attempts"] != attempt:  # taken over: it goes on after its checkpoint
                        attempt = job["attempts"]
                        bar.reset(total=job["progress"]["epochs"])
                        bar.update(job.get("resumed_from_epoch") or 0)
                    bar.total = job["progress"]["epochs"]
                    bar.set_description_str(self._label(job["status"]))
                else:
                    row = event.row
                    bar.update(max(0, int(row["epoch"]) - bar.n))
                    bar.set_postfix_str(display.metrics_text(row))
        finally:
            bar.refresh()
            bar.close()

    def _label(self, status: str) -> str:
        return f"{self.name} · {status}" if self.name else status

    def _ended_error(self) -> JobFailedError | JobCancelledError:
        record = self.record
        if record["status"] == "cancelled":
            return JobCancelledError(f"job {self.id} was cancelled", record)
        error = record["error"] or {"type": "error", "message": "(no message)"}
        return JobFailedError(f"job {self.id} failed: {error['type']}: {error['message']}", record)

    def script(self) -> Script:
        """The job as the plain Keras script a learner would write (GET /jobs/{id}/script): the same data and
        splits, model, compile and fit; seeded, it prints the job's numbers."""
        return Script(self._client.transport.request("GET", f"/jobs/{self.id}/script").text)

    def cancel(self) -> Job:
        """Cancel the job: a queued one at once, a running one at its next batch (no model then)."""
        self.record = self._client.transport.json("POST", f"/jobs/{self.id}/cancel")
        return self

    def plot(self, metrics: Sequence[str] | None = None) -> list[Any]:
        """The training and validation curves (dashed) of each metric, one chart per metric (default: the loss
        and every metric but the learning rate), drawn with matplotlib; returns the axes."""
        history = self.history
        names = [m for m in history.metrics if not m.startswith("val_") and m != "learning_rate"]
        chosen = list(metrics) if metrics is not None else names
        unknown = [m for m in chosen if m not in history.metrics]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} not in the history; it has: {', '.join(history.metrics)}")
        epochs = history.epochs
        curves: dict[str, dict[str, tuple[list[int], list[float | None]]]] = {"train": {}, "validation": {}}
        for metric in chosen:
            curves["train"][metric] = (epochs, history[metric])
            if f"val_{metric}" in history.metrics:
                curves["validation"][metric] = (epochs, history[f"val_{metric}"])
        return display.plot_curves(
            curves, chosen, title=self.name or f"job {self.id}", dashed=frozenset({"validation"})
        )

    def __repr__(self) -> str:
        record = self.record
        progress = record["progress"]
        return (
            f"Job(id={self.id!r}, name={record['name']!r}, status={record['status']!r}, "
            f"epoch={progress['epoch']}/{progress['epochs']})"
        )

    def _repr_html_(self) -> str:
        record = self.record
        status = record["status"]
        progress = record["progress"]
        colour = STATUS_COLOURS.get(status, "inherit")
        lines = [
            f"<b>{html.escape(record['name'] or 'job')}</b> <code>{self.id}</code> "
            f'<span style="color:{colour}"><b>{status}</b></span> · epoch {progress["epoch"]}/{progress["epochs"]}'
        ]
        if record["history"]:
            lines.append("last epoch: " + display.pairs_html(_metrics_of(record["history"][-1])))
        if record["evaluation"]:
            lines.append("held-out: " + display.pairs_html(record["evaluation"]))
        training = record["training"]
        if training and training["stop_reason"]:
            lines.append(html.escape(training["stop_reason"]))
        if record["model_id"]:
            lines.append(f"model <code>{record['model_id']}</code>")
        if record["error"]:
            lines.append(html.escape(f"{record['error']['type']}: {record['error']['message']}"))
        table = History(record["history"])._repr_html_() if record["history"] else ""
        details = f"<details><summary>history</summary>{table}</details>" if table else ""
        return "<div>" + "<br>".join(lines) + details + "</div>"


def _metrics_of(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in display.NOT_METRICS}


def _no_model_yet(record: JobRecord) -> TrainServeError:
    return TrainServeError(f"job {record['job_id']} is {record['status']}: it has no model yet (job.wait() first)")


class Script(str):
    """A job's Keras script: a str, shown in a notebook as highlighted Python."""

    __slots__ = ()

    def _repr_markdown_(self) -> str:
        return f"```python\n{self}\n```"
