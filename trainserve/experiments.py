"""Experiments: a search over a training request's fields, its trials ordinary jobs, followed on a leaderboard."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self, cast

from trainserve import display
from trainserve.errors import ExperimentEndedError
from trainserve.records import (
    ExperimentChanged,
    ExperimentCreated,
    ExperimentEvent,
    ExperimentRecord,
    Page,
    TrialChanged,
    TrialRecord,
    TrialState,
)

if TYPE_CHECKING:
    from trainserve.client import Client
    from trainserve.jobs import Job
    from trainserve.models import Model

# The order trial states are counted in, from done to waiting.
TRIAL_STATES: tuple[TrialState, ...] = ("complete", "pruned", "running", "queued", "failed", "refused", "cancelled")
# Trials in these states are over.
TRIAL_ENDED = frozenset({"complete", "pruned", "failed", "cancelled", "refused"})
_PRUNED = re.compile(r"^pruned by the (?P<pruner>.+?) pruner at epoch (?P<epoch>\d+)")
REASON_CHARS = 48


def compact(value: Any) -> str:
    """A parameter's value in one short cell: an object by its type then its other fields, `sgd
    learning_rate=0.01 momentum=0.9 nesterov`, a true flag by its name alone."""
    if isinstance(value, dict):
        parts = [str(value["type"])] if "type" in value else []
        for key, item in value.items():
            if key == "type" or item is False or item is None:
                continue
            if item is True:
                parts.append(str(key))
            else:
                text = compact(item)
                parts.append(f"{key}=({text})" if isinstance(item, dict) else f"{key}={text}")
        return " ".join(parts)
    if isinstance(value, list):
        return "[" + ", ".join(compact(item) for item in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _clip(text: str, limit: int = REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stop_text(trial: TrialRecord) -> str:
    """Why a trial ended early or failed, in a few words; the whole reason is in GET /experiments/{id}."""
    error = trial["error"]
    if error is not None and trial["state"] == "refused":
        # "space.path: with path = value: what is wrong": the state says refused, the last part says why.
        return _clip(error["message"].rpartition(": ")[2])
    if error is not None and trial["state"] == "failed":
        return error["type"]
    reason = trial["stop_reason"]
    if not reason:
        return ""
    pruned = _PRUNED.match(reason)
    if pruned:
        return f"pruned ({pruned['pruner']}) at epoch {pruned['epoch']}"
    if reason.startswith("early_stopping"):
        epoch = trial["stopped_epoch"]
        return "early stopping" + (f" at epoch {epoch}" if epoch else "")
    return _clip(reason)


def counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{counts[state]} {state}" for state in TRIAL_STATES if counts.get(state))


def best_text(experiment: ExperimentRecord) -> str:
    best = experiment["best"]
    if best is None:
        return ""
    return f"#{best['number']} {experiment['objective']['metric']} {best['objective']:.4f}"


@dataclass
class Leaderboard:
    """An experiment and its trials as last heard, ranked by objective: a table to redraw, or a line per change."""

    experiment: ExperimentRecord
    trials: dict[int, TrialRecord] = field(default_factory=dict)

    @classmethod
    def of(cls, experiment: ExperimentRecord) -> Self:
        return cls(experiment, {trial["number"]: trial for trial in experiment.get("trials") or []})

    def apply(self, event: ExperimentEvent) -> TrialRecord | None:
        """Take an event in; returns its trial if the trial is new or its state changed."""
        if isinstance(event, ExperimentChanged):
            self.experiment = event.experiment
            return None
        trial = event.trial
        before = self.trials.get(trial["number"])
        self.trials[trial["number"]] = trial
        return trial if before is None or before["state"] != trial["state"] else None

    def ranked(self) -> list[TrialRecord]:
        """Complete trials by objective, best first; then pruned ones, whose objective comes from a shorter fit
        and so does not compete with theirs (the service never makes one the best); then those without one."""
        sign = -1 if self.experiment["objective"]["direction"] == "max" else 1

        def key(trial: TrialRecord) -> tuple[int, float, int]:
            objective = trial["objective"]
            if objective is None:
                return (2, 0.0, trial["number"])
            return (0 if trial["state"] == "complete" else 1, sign * objective, trial["number"])

        return sorted(self.trials.values(), key=key)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in self.trials.values():
            counts[trial["state"]] = counts.get(trial["state"], 0) + 1
        return counts

    def title(self) -> str:
        experiment = self.experiment
        parts = [
            experiment["name"],
            experiment["status"]
            + (" (cancelling)" if experiment["cancel_requested"] and experiment["status"] == "running" else ""),
            f"{counts_text(self.counts()) or 'no trials yet'} of {experiment['max_trials']}",
        ]
        if experiment["best"] is not None:
            parts.append(f"best {best_text(experiment)}")
        return " · ".join(parts)

    def header(self) -> list[str]:
        objective = self.experiment["objective"]
        arrow = "↑" if objective["direction"] == "max" else "↓"
        return ["#", "state", f"{objective['metric']} {arrow}", "epoch", *self.experiment["params"], "stop"]

    def cells(self, trial: TrialRecord) -> list[str]:
        value = trial["objective"]
        return [
            str(trial["number"]),
            trial["state"],
            "" if value is None else f"{value:.4f}",
            f"{trial['progress']['epoch']}/{trial['progress']['epochs']}",
            *(compact(trial["params"].get(path)) for path in self.experiment["params"]),
            stop_text(trial),
        ]

    def line(self, trial: TrialRecord) -> str:
        """A trial as one line of plain text, for output that is not a terminal."""
        parts = [f"trial {trial['number']} {trial['state']}"]
        if trial["objective"] is not None:
            parts.append(f"{self.experiment['objective']['metric']} {trial['objective']:.4f}")
        parts.append(f"epoch {trial['progress']['epoch']}/{trial['progress']['epochs']}")
        parts += [f"{path}={compact(trial['params'].get(path))}" for path in self.experiment["params"]]
        if stop := stop_text(trial):
            parts.append(stop)
        return "  ".join(parts)

    def outcome(self) -> list[str]:
        """How the experiment ended: its status, the best trial and the published model, then each trial that
        failed with its whole error."""
        experiment = self.experiment
        head: str = experiment["status"]
        if experiment["error"]:
            head += f": {experiment['error']}"
        if experiment["published_model_id"]:
            head += f": published model {experiment['published_model_id']} ({experiment['name']})"
        lines = [head]
        best = experiment["best"]
        if best is not None:
            objective = experiment["objective"]
            text = f"best trial {best['number']}: {objective['metric']} {best['objective']:.4f} ({objective['source']})"
            lines.append(text + (f", model {best['model_id']}" if best["model_id"] else ""))
            lines += [f"  {path} = {compact(value)}" for path, value in best["params"].items()]
        for trial in sorted(self.trials.values(), key=lambda t: t["number"]):
            if trial["error"] is not None:
                error = trial["error"]
                lines.append(f"trial {trial['number']} {trial['state']}: {error['type']}: {error['message']}")
        return lines

    def __str__(self) -> str:
        rows = [self.cells(trial) for trial in self.ranked()]
        return self.title() + "\n" + display.text_table(self.header(), rows)

    def _repr_html_(self) -> str:
        best = self.experiment["best"]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.header())
        rows = []
        for trial in self.ranked():
            weight = "font-weight:bold;" if best is not None and best["number"] == trial["number"] else ""
            cells = "".join(f'<td style="text-align:left">{html.escape(c)}</td>' for c in self.cells(trial))
            rows.append(f'<tr style="{weight}">{cells}</tr>')
        caption = f"<caption>{html.escape(self.title())}</caption>"
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


class Experiment:
    """An experiment of the service: ``client.experiments.create(spec)`` or ``client.experiments.get(id)``.

    Its properties read its record, fetched again while it runs; ``wait()`` follows it live on a leaderboard;
    ``model`` is the model it published (its best trial's)."""

    def __init__(self, client: Client, record: ExperimentRecord, created: ExperimentCreated | None = None) -> None:
        self._client = client
        self.record = record
        self.created = created
        """POST /experiments' answer when this client created it: ``trials`` asked at once, ``checked`` dry-built."""

    @property
    def id(self) -> str:
        return self.record["experiment_id"]

    @property
    def name(self) -> str:
        return self.record["name"]

    def refresh(self) -> Experiment:
        """Fetch the experiment again, with every trial (GET /experiments/{id})."""
        self.record = self._client.transport.json("GET", f"/experiments/{self.id}")
        return self

    def _current(self) -> ExperimentRecord:
        if self.record["status"] == "running" or self.record.get("trials") is None:
            self.refresh()
        return self.record

    @property
    def status(self) -> str:
        """``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self._current()["status"]

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial so far: its number, job, objective, parameters and model."""
        best = self._current()["best"]
        return None if best is None else dict(best)

    @property
    def trials(self) -> list[TrialRecord]:
        return list(self._current().get("trials") or [])

    @property
    def leaderboard(self) -> Leaderboard:
        """The trials ranked by objective; a notebook shows it as a table."""
        return Leaderboard.of(self._current())

    @property
    def model(self) -> Model:
        """The model the experiment published under its name (its best trial's), once it has succeeded."""
        record = self._current()
        best = record["best"]
        model_id = record["published_model_id"] or (best["model_id"] if best is not None else None)
        if model_id is None:
            raise ExperimentEndedError(f"experiment {self.id} is {record['status']} and has no model yet", record)
        return self._client.model(model_id)

    def trial_job(self, number: int) -> Job:
        """The job of trial ``number``."""
        for trial in self.trials:
            if trial["number"] == number:
                return self._client.job(trial["job_id"])
        raise KeyError(f"experiment {self.id} has no trial {number}")

    def cancel(self) -> Experiment:
        """Ask no more trials, cancel the queued ones and stop the running ones at their next batch."""
        self.record = self._client.transport.json("POST", f"/experiments/{self.id}/cancel")
        return self

    def curves(self, metric: str = "loss") -> dict[str, Any]:
        """One metric of every trial, epoch by epoch (GET /experiments/{id}/curves)."""
        answer: dict[str, Any] = self._client.transport.json(
            "GET", f"/experiments/{self.id}/curves", params={"metric": metric}
        )
        return answer

    def plot(self, metric: str = "val_loss") -> list[Any]:
        """Every trial's curve of one metric on one chart, pruned trials dashed; returns the axes."""
        curves = self.curves(metric)
        series: dict[str, dict[str, tuple[list[int], list[float | None]]]] = {}
        pruned = set()
        for trial in curves["trials"]:
            label = f"#{trial['number']}"
            series[label] = {metric: (trial["epochs"], trial["values"])}
            if trial["state"] == "pruned":
                pruned.add(label)
        return display.plot_curves(series, [metric], title=self.name, dashed=frozenset(pruned))

    def events(self, *, timeout: float | None = None) -> Iterator[ExperimentEvent]:
        """Its trial and experiment events until it ends (GET /experiments/{id}/events). Each carries a whole
        state, not a change, so one repeated after a reconnect is harmless."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event, data in self._client.transport.follow(
            f"/experiments/{self.id}/events",
            f"experiment {self.id}",
            lambda event, data: event == "experiment" and data.get("status") != "running",
            deadline,
        ):
            if event == "trial":
                yield TrialChanged(cast(TrialRecord, data))
            elif event == "experiment":
                yield ExperimentChanged(cast(ExperimentRecord, data))

    def wait(self, progress: bool = True, timeout: float | None = None) -> Experiment:
        """Follow the experiment until it ends; with ``progress``, a bar of its trials and (in a notebook) its
        leaderboard redrawn as trials change, ending as the final leaderboard. Returns it once it has succeeded;
        raises ExperimentEndedError if it failed or was cancelled, WaitTimeoutError after ``timeout`` seconds."""
        board = Leaderboard.of(self.refresh().record)
        live = None
        if board.experiment["status"] == "running":
            if progress:
                live = self._follow_live(board, timeout)
            else:
                for _ in self.events(timeout=timeout):
                    pass
            self.refresh()
        if progress:
            final = Leaderboard.of(self.record)
            if live is not None:
                live.update(final)
            else:
                display.show(final)
        if self.record["status"] != "succeeded":
            error = f": {self.record['error']}" if self.record["error"] else ""
            raise ExperimentEndedError(f"experiment {self.id} {self.record['status']}{error}", self.record)
        return self

    def _follow_live(self, board: Leaderboard, timeout: float | None) -> Any:
        """A bar of the trials that have ended and, in a notebook, the leaderboard redrawn in place at every
        event; the leaderboard's display handle (None elsewhere)."""
        handle = None
        if display.in_notebook():
            from IPython.display import display as show

            handle = show(board, display_id=True)  # type: ignore[no-untyped-call]
        bar = display.progress_bar(board.experiment["max_trials"], board.experiment["name"], "trial")
        try:
            for event in self.events(timeout=timeout):
                board.apply(event)
                ended = sum(1 for trial in board.trials.values() if trial["state"] in TRIAL_ENDED)
                bar.update(max(0, ended - bar.n))
                bar.set_postfix_str(best_text(board.experiment))
                if handle is not None:
                    handle.update(board)
        finally:
            bar.refresh()
            bar.close()
        return handle

    def __repr__(self) -> str:
        return f"Experiment(id={self.id!r}, name={self.name!r}, status={self.record['status']!r})"

    def _repr_html_(self) -> str:
        return Leaderboard.of(self.record)._repr_html_()


class Experiments:
    """``client.experiments``: create, get, list and cancel experiments."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Experiment:
        """Start an experiment from its request (POST /experiments): a ``base`` train request, a ``space`` by
        JSON path, ``search``, ``objective``, … (see ``examples/experiment_*.json``). A space that can make an
        invalid model is an InvalidRequestError naming the space path and the value."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        created = cast(
            ExperimentCreated,
            self._client.transport.json("POST", "/experiments", json=dict(spec), headers=headers),
        )
        experiment = self.get(created["experiment_id"])
        experiment.created = created
        return experiment

    def get(self, experiment_id: str) -> Experiment:
        record = cast(ExperimentRecord, self._client.transport.json("GET", f"/experiments/{experiment_id}"))
        return Experiment(self._client, record)

    def list(self, *, status: str | None = None, limit: int = 20, offset: int = 0) -> Page[Experiment]:
        """Experiments, newest first, each with its counts of trials by state and its best trial."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        listing = self._client.transport.json("GET", "/experiments", params=params)
        return Page((Experiment(self._client, record) for record in listing["data"]), listing["count"])

    def cancel(self, experiment_id: str) -> Experiment:
        record = cast(ExperimentRecord, self._client.transport.json("POST", f"/experiments/{experiment_id}/cancel"))
        return Experiment(self._client, record)
