"""The command line's side of the API: HTTP calls to a running service and their rendering with rich.

Imports neither TensorFlow nor the server, so the CLI starts in a blink."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# `trainserve train --watch` exits with the job's outcome.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}
FINISHED = frozenset(EXIT_CODES)
EXIT_REFUSED = 2


class ClientError(Exception):
    """The service refused a request or could not be reached; the message says why."""


# The experiment endpoints' JSON as the API's schemas (service/api/experiment_schemas.py) declare it, written out
# here so the command line does not import the server to type what it reads.
TrialState = Literal["queued", "running", "complete", "pruned", "failed", "cancelled", "refused"]
ExperimentStatus = Literal["running", "succeeded", "failed", "cancelled"]


class TrialProgress(TypedDict):
    epoch: int
    epochs: int


class JobError(TypedDict):
    type: str
    message: str


class Trial(TypedDict):
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


class Experiment(TypedDict):
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
    trials: NotRequired[list[Trial] | None]
    spec: NotRequired[dict[str, Any]]


class ExperimentCreated(TypedDict):
    experiment_id: str
    status: ExperimentStatus
    trials: int
    checked: int


class ExperimentList(TypedDict):
    data: list[Experiment]
    count: int


@dataclass(frozen=True)
class TrialChanged:
    """`event: trial`: a trial's state, progress, last epoch or objective changed."""

    trial: Trial


@dataclass(frozen=True)
class ExperimentChanged:
    """`event: experiment`: the experiment's status, counts or best trial changed (its trials left out)."""

    experiment: Experiment


ExperimentEvent = TrialChanged | ExperimentChanged


@dataclass
class Client:
    url: str
    api_key: str | None = None
    timeout: float = 60.0

    def _http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url.rstrip("/"), headers=headers, timeout=self.timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            with self._http() as http:
                response = http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach TrainServe at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise ClientError(describe_error(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """A job's (event, data) pairs until it ends."""
        return self._follow(
            f"/jobs/{job_id}/events",
            f"job {job_id}",
            lambda event, data: event == "status" and data.get("status") in FINISHED,
        )

    def create_experiment(self, spec: dict[str, Any]) -> ExperimentCreated:
        return cast(ExperimentCreated, self.json("POST", "/experiments", json=spec))

    def experiments(self, *, status: str | None = None, limit: int = 20) -> ExperimentList:
        params: dict[str, str | int] = {"limit": limit, **({"status": status} if status else {})}
        return cast(ExperimentList, self.json("GET", "/experiments", params=params))

    def experiment(self, experiment_id: str) -> Experiment:
        return cast(Experiment, self.json("GET", f"/experiments/{experiment_id}"))

    def cancel_experiment(self, experiment_id: str) -> Experiment:
        return cast(Experiment, self.json("POST", f"/experiments/{experiment_id}/cancel"))

    def experiment_events(self, experiment_id: str) -> Iterator[ExperimentEvent]:
        """An experiment's trial and experiment events until it ends. Each carries a whole state, not a change,
        so one repeated after a reconnect is harmless."""
        for event, data in self._follow(
            f"/experiments/{experiment_id}/events",
            f"experiment {experiment_id}",
            lambda event, data: event == "experiment" and data.get("status") != "running",
        ):
            if event == "trial":
                yield TrialChanged(cast(Trial, data))
            elif event == "experiment":
                yield ExperimentChanged(cast(Experiment, data))

    def _follow(
        self, path: str, what: str, ends: Callable[[str, dict[str, Any]], bool]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """An event stream's (event, data) pairs until one `ends` it, reconnecting with Last-Event-ID if the
        stream drops or the service ends it first (streams last at most TRAINSERVE_EVENT_STREAM_MAX_SECONDS)."""
        last_id: str | None = None
        attempt = 0
        while attempt < 30:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self._http() as http, http.stream("GET", path, headers=headers) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise ClientError(describe_error(r))
                    event, data, event_id = "", "", None
                    for line in r.iter_lines():
                        if line == "":
                            if event:
                                last_id = event_id or last_id
                                payload = json.loads(data)
                                yield event, payload
                                if ends(event, payload):
                                    return
                            event, data, event_id = "", "", None
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
                        elif line.startswith("id:"):
                            event_id = line[3:].strip()
                attempt = 0  # the service ended the stream before the end: go on at once
            except (httpx.TransportError, httpx.StreamError):
                attempt += 1
                time.sleep(min(0.5 * attempt, 5))
        raise ClientError(f"lost the event stream of {what}")


def describe_error(response: httpx.Response) -> str:
    """The API's error shape as lines a person reads: the message, then each problem with its path."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"HTTP {response.status_code}: {body}"
    head = f"HTTP {response.status_code}: "
    problems = error.get("errors") or []
    if len(problems) == 1 and problems[0].get("message") == error.get("message"):
        # One problem is its own summary: one line, with its path when it has one.
        path = problems[0].get("path")
        return head + (f"{path}: " if path else "") + str(error.get("message", ""))
    lines = [head + str(error.get("message", ""))]
    lines += [f"  {p.get('path') or '(request)'}: {p.get('message')}" for p in problems]
    return "\n".join(lines)


def _metrics_text(row: dict[str, Any]) -> str:
    parts = []
    for key, value in row.items():
        if key in ("epoch", "attempt") or not isinstance(value, int | float):
            continue
        parts.append(f"{key} {value:.4f}")
    return " · ".join(parts)


def watch(client: Client, job_id: str, console: Console) -> str:
    """Show a job's progress, one bar advancing per epoch with its metrics; returns its final status."""
    status = "queued"
    with Progress(
        TextColumn("[bold]{task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[metrics]}", markup=False),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("train", total=None, state=status, metrics="")
        attempt = 1
        for event, data in client.events(job_id):
            if event == "status":
                status = data["status"]
                epochs = data["progress"]["epochs"]
                progress.update(task, total=epochs, state=status)
                if data.get("attempts", 1) != attempt:
                    attempt = data["attempts"]
                    progress.update(task, completed=0)
            elif event == "epoch":
                progress.update(task, completed=data["epoch"], metrics=_metrics_text(data))
    job = client.json("GET", f"/jobs/{job_id}")
    if job["status"] == "succeeded":
        console.print(f"[green]succeeded[/green]: model {job['model_id']}")
        if job.get("evaluation"):
            console.print(f"held-out: {escape(_metrics_text(job['evaluation']))}")
    elif job["status"] == "failed":
        error = job.get("error") or {}
        console.print(f"[red]failed[/red]: {escape(str(error.get('type')))}: {escape(str(error.get('message')))}")
    else:
        console.print(f"[yellow]{escape(str(job['status']))}[/yellow]")
    return str(job["status"])


# The order trial states are counted in, from done to waiting.
TRIAL_STATES: tuple[TrialState, ...] = ("complete", "pruned", "running", "queued", "failed", "refused", "cancelled")
STATE_STYLES: dict[TrialState, str] = {
    "complete": "green",
    "pruned": "yellow",
    "running": "cyan",
    "queued": "dim",
    "failed": "red",
    "refused": "red",
    "cancelled": "dim",
}
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


def stop_text(trial: Trial) -> str:
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


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[state]} {state}" for state in TRIAL_STATES if counts.get(state))


def _best_text(experiment: Experiment) -> str:
    best = experiment["best"]
    if best is None:
        return ""
    return f"#{best['number']} {experiment['objective']['metric']} {best['objective']:.4f}"


@dataclass
class Leaderboard:
    """An experiment and its trials as last heard, ranked by objective: a table to redraw, or a line per change."""

    experiment: Experiment
    trials: dict[int, Trial] = field(default_factory=dict)

    @classmethod
    def of(cls, experiment: Experiment) -> Leaderboard:
        return cls(experiment, {trial["number"]: trial for trial in experiment.get("trials") or []})

    def apply(self, event: ExperimentEvent) -> Trial | None:
        """Take an event in; returns its trial if the trial is new or its state changed."""
        if isinstance(event, ExperimentChanged):
            self.experiment = event.experiment
            return None
        trial = event.trial
        before = self.trials.get(trial["number"])
        self.trials[trial["number"]] = trial
        return trial if before is None or before["state"] != trial["state"] else None

    def ranked(self) -> list[Trial]:
        """Complete trials by objective, best first; then pruned ones, whose objective comes from a shorter fit
        and so does not compete with theirs (the service never makes one the best); then those without one."""
        sign = -1 if self.experiment["objective"]["direction"] == "max" else 1

        def key(trial: Trial) -> tuple[int, float, int]:
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

    def title(self) -> Text:
        experiment = self.experiment
        parts = [
            experiment["name"],
            experiment["status"]
            + (" (cancelling)" if experiment["cancel_requested"] and experiment["status"] == "running" else ""),
            f"{_counts_text(self.counts()) or 'no trials yet'} of {experiment['max_trials']}",
        ]
        if experiment["best"] is not None:
            parts.append(f"best {_best_text(experiment)}")
        return Text(" · ".join(parts))

    def view(self) -> Group:
        """The title line (wrapped at the terminal's width, not the table's), then the table: one frame."""
        return Group(self.title(), self.table())

    def table(self) -> Table:
        objective = self.experiment["objective"]
        best = self.experiment["best"]
        table = Table()
        table.add_column("#", justify="right")
        table.add_column("state")
        table.add_column(
            Text(f"{objective['metric']} {'↑' if objective['direction'] == 'max' else '↓'}"), justify="right"
        )
        table.add_column("epoch", justify="right")
        for path in self.experiment["params"]:
            table.add_column(Text(path), overflow="fold")
        table.add_column("stop", overflow="fold")
        for trial in self.ranked():
            value = trial["objective"]
            table.add_row(
                str(trial["number"]),
                Text(trial["state"], style=STATE_STYLES.get(trial["state"], "")),
                "" if value is None else f"{value:.4f}",
                f"{trial['progress']['epoch']}/{trial['progress']['epochs']}",
                *(Text(compact(trial["params"].get(path))) for path in self.experiment["params"]),
                Text(stop_text(trial)),
                style="bold" if best is not None and best["number"] == trial["number"] else None,
            )
        return table

    def line(self, trial: Trial) -> Text:
        """A trial as one line of plain text, for output that is not a terminal."""
        parts = [f"trial {trial['number']} {trial['state']}"]
        if trial["objective"] is not None:
            parts.append(f"{self.experiment['objective']['metric']} {trial['objective']:.4f}")
        parts.append(f"epoch {trial['progress']['epoch']}/{trial['progress']['epochs']}")
        parts += [f"{path}={compact(trial['params'].get(path))}" for path in self.experiment["params"]]
        if stop := stop_text(trial):
            parts.append(stop)
        return Text("  ".join(parts))

    def outcome(self) -> list[Text]:
        """How the experiment ended: its status, the best trial and the published model, then each trial that
        failed with its whole error."""
        experiment = self.experiment
        status = experiment["status"]
        style = "green" if status == "succeeded" else "red" if status == "failed" else "yellow"
        head = Text(status, style=style)
        if experiment["error"]:
            head.append(f": {experiment['error']}")
        if experiment["published_model_id"]:
            head.append(f": published model {experiment['published_model_id']} ({experiment['name']})")
        lines = [head]
        best = experiment["best"]
        if best is not None:
            objective = experiment["objective"]
            text = f"best trial {best['number']}: {objective['metric']} {best['objective']:.4f} ({objective['source']})"
            lines.append(Text(text + (f", model {best['model_id']}" if best["model_id"] else "")))
            lines += [Text(f"  {path} = {compact(value)}") for path, value in best["params"].items()]
        for trial in sorted(self.trials.values(), key=lambda t: t["number"]):
            if trial["error"] is not None:
                error = trial["error"]
                lines.append(Text(f"trial {trial['number']} {trial['state']}: {error['type']}: {error['message']}"))
        return lines


def watch_experiment(client: Client, experiment_id: str, console: Console) -> Experiment:
    """Follow an experiment to its end: on a terminal a leaderboard redrawn at each event, else one line per
    trial state change; then the final table and how it ended. Returns the experiment as it ended."""
    board = Leaderboard.of(client.experiment(experiment_id))
    if console.is_terminal:
        # Transient: the last frame may be cut to the terminal's height; the final table is printed whole below.
        with Live(board.view(), console=console, auto_refresh=False, transient=True) as live:
            for event in client.experiment_events(experiment_id):
                board.apply(event)
                live.update(board.view(), refresh=True)
    else:
        for trial in sorted(board.trials.values(), key=lambda t: t["number"]):
            console.print(board.line(trial), soft_wrap=True)
        for event in client.experiment_events(experiment_id):
            changed = board.apply(event)
            if changed is not None:
                console.print(board.line(changed), soft_wrap=True)
    final = Leaderboard.of(client.experiment(experiment_id))
    console.print(final.title(), soft_wrap=True)
    console.print(final.table())
    for line in final.outcome():
        console.print(line, soft_wrap=True)
    return final.experiment


def experiments_table(listing: ExperimentList) -> Table:
    table = Table(title=f"experiments ({listing['count']})")
    for column in ("experiment_id", "name", "status", "trials", "states", "best", "published model", "created"):
        table.add_column(column, overflow="fold")
    for experiment in listing["data"]:
        table.add_row(
            experiment["experiment_id"],
            Text(experiment["name"]),
            experiment["status"],
            f"{experiment['trials_asked']}/{experiment['max_trials']}",
            _counts_text(experiment["counts"]),
            _best_text(experiment),
            experiment["published_model_id"] or "",
            experiment["created_at"][:19].replace("T", " "),
        )
    return table


def jobs_table(listing: dict[str, Any]) -> Table:
    table = Table(title=f"jobs ({listing['count']})")
    for column in ("job_id", "name", "status", "progress", "accuracy", "model_id", "created"):
        table.add_column(column, overflow="fold")
    for job in listing["data"]:
        last = job["history"][-1] if job["history"] else {}
        accuracy = last.get("val_accuracy", last.get("accuracy"))
        table.add_row(
            job["job_id"],
            Text(job["name"] or ""),  # user text is shown as written, never read as markup
            job["status"],
            f"{job['progress']['epoch']}/{job['progress']['epochs']}",
            "" if accuracy is None else f"{accuracy:.4f}",
            job["model_id"] or "",
            job["created_at"][:19].replace("T", " "),
        )
    return table


def models_table(listing: dict[str, Any]) -> Table:
    table = Table(title=f"models ({listing['count']})")
    for column in ("model_id", "name", "version", "dataset", "params", "accuracy", "created"):
        table.add_column(column, overflow="fold")
    for model in listing["data"]:
        dataset = model["dataset"].get("name") or model["dataset"].get("id") or ""
        accuracy = (model.get("evaluation") or model.get("metrics") or {}).get("accuracy")
        table.add_row(
            model["model_id"],
            Text(model["name"]),
            str(model.get("version", "")),
            Text(str(dataset)),
            f"{model['total_params']:,}",
            "" if accuracy is None else f"{accuracy:.4f}",
            model["created_at"][:19].replace("T", " "),
        )
    return table


def predictions_table(answer: dict[str, Any]) -> Table:
    table = Table(title=Text(f"model {answer['model_id']}"))
    table.add_column("#", justify="right")
    table.add_column("class", justify="right")
    labels = answer.get("labels")
    if labels:
        table.add_column("label")
    table.add_column("probability", justify="right")
    for i, (cls, row) in enumerate(zip(answer["classes"], answer["predictions"], strict=True)):
        probability = row[cls] if len(row) > 1 else (row[0] if cls == 1 else 1 - row[0])
        cells: list[str | Text] = [str(i), str(cls), *([Text(labels[i])] if labels else []), f"{probability:.4f}"]
        table.add_row(*cells)
    return table


def read_spec(path: Path) -> dict[str, Any]:
    try:
        spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from exc
    return spec
