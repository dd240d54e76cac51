"""The command line's rendering with rich: a job's progress bar, an experiment's leaderboard, the tables of jobs,
models and predictions. Every HTTP call is the Python client's (``trainserve``).

Imports neither TensorFlow nor the server, so the CLI starts in a blink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from trainserve import Experiment, Job, Model, Predictions, TrainServeError
from trainserve import Leaderboard as Board
from trainserve.experiments import best_text, counts_text
from trainserve.records import ExperimentRecord, Page, StatusEvent, TrialState

# `trainserve train --watch` exits with the job's outcome.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}
EXIT_REFUSED = 2


def _metrics_text(row: dict[str, Any]) -> str:
    parts = []
    for key, value in row.items():
        if key in ("epoch", "attempt") or not isinstance(value, int | float):
            continue
        parts.append(f"{key} {value:.4f}")
    return " · ".join(parts)


def watch(job: Job, console: Console) -> str:
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
        for event in job.events():
            if isinstance(event, StatusEvent):
                data = event.state
                status = data["status"]
                progress.update(task, total=data["progress"]["epochs"], state=status)
                if data.get("attempts", 1) != attempt:
                    attempt = data["attempts"]
                    progress.update(task, completed=0)
            else:
                progress.update(task, completed=event.row["epoch"], metrics=_metrics_text(event.row))
    record = job.refresh().record
    if record["status"] == "succeeded":
        console.print(f"[green]succeeded[/green]: model {record['model_id']}")
        if record["evaluation"]:
            console.print(f"held-out: {escape(_metrics_text(record['evaluation']))}")
    elif record["status"] == "failed":
        error: dict[str, Any] = dict(record["error"] or {})
        console.print(f"[red]failed[/red]: {escape(str(error.get('type')))}: {escape(str(error.get('message')))}")
    else:
        console.print(f"[yellow]{escape(str(record['status']))}[/yellow]")
    return str(record["status"])


STATE_STYLES: dict[TrialState, str] = {
    "complete": "green",
    "pruned": "yellow",
    "running": "cyan",
    "queued": "dim",
    "failed": "red",
    "refused": "red",
    "cancelled": "dim",
}


class Leaderboard(Board):
    """The client's leaderboard drawn by rich: user text (names, values) is shown as written, never read as
    markup."""

    def view(self) -> Group:
        """The title line (wrapped at the terminal's width, not the table's), then the table: one frame."""
        return Group(Text(self.title()), self.table())

    def table(self) -> Table:
        best = self.experiment["best"]
        table = Table()
        header = self.header()
        params = len(self.experiment["params"])
        for index, column in enumerate(header):
            numeric = index in (0, 2, 3)
            folded = 4 <= index < 4 + params or index == len(header) - 1
            table.add_column(
                Text(column), justify="right" if numeric else "left", overflow="fold" if folded else "ellipsis"
            )
        for trial in self.ranked():
            cells: list[Text | str] = [Text(cell) for cell in self.cells(trial)]
            cells[1] = Text(trial["state"], style=STATE_STYLES.get(trial["state"], ""))
            bold = best is not None and best["number"] == trial["number"]
            table.add_row(*cells, style="bold" if bold else None)
        return table

    def outcome_lines(self) -> list[Text]:
        """How it ended, the status in its colour."""
        lines = [Text(line) for line in self.outcome()]
        status = self.experiment["status"]
        style = "green" if status == "succeeded" else "red" if status == "failed" else "yellow"
        lines[0].stylize(style, 0, len(status))
        return lines


def watch_experiment(experiment: Experiment, console: Console) -> ExperimentRecord:
    """Follow an experiment to its end: on a terminal a leaderboard redrawn at each event, else one line per
    trial state change; then the final table and how it ended. Returns the experiment as it ended."""
    board = Leaderboard.of(experiment.refresh().record)
    if console.is_terminal:
        # Transient: the last frame may be cut to the terminal's height; the final table is printed whole below.
        with Live(board.view(), console=console, auto_refresh=False, transient=True) as live:
            for event in experiment.events():
                board.apply(event)
                live.update(board.view(), refresh=True)
    else:
        for trial in sorted(board.trials.values(), key=lambda t: t["number"]):
            console.print(Text(board.line(trial)), soft_wrap=True)
        for event in experiment.events():
            changed = board.apply(event)
            if changed is not None:
                console.print(Text(board.line(changed)), soft_wrap=True)
    final = Leaderboard.of(experiment.refresh().record)
    console.print(Text(final.title()), soft_wrap=True)
    console.print(final.table())
    for line in final.outcome_lines():
        console.print(line, soft_wrap=True)
    return final.experiment


def experiments_table(page: Page[Experiment]) -> Table:
    table = Table(title=f"experiments ({page.count})")
    for column in ("experiment_id", "name", "status", "trials", "states", "best", "published model", "created"):
        table.add_column(column, overflow="fold")
    for experiment in page:
        record = experiment.record
        table.add_row(
            record["experiment_id"],
            Text(record["name"]),
            record["status"],
            f"{record['trials_asked']}/{record['max_trials']}",
            counts_text(record["counts"]),
            best_text(record),
            record["published_model_id"] or "",
            record["created_at"][:19].replace("T", " "),
        )
    return table


def jobs_table(page: Page[Job]) -> Table:
    table = Table(title=f"jobs ({page.count})")
    for column in ("job_id", "name", "status", "progress", "accuracy", "model_id", "created"):
        table.add_column(column, overflow="fold")
    for job in page:
        record = job.record
        last = record["history"][-1] if record["history"] else {}
        accuracy = last.get("val_accuracy", last.get("accuracy"))
        table.add_row(
            record["job_id"],
            Text(record["name"] or ""),  # user text is shown as written, never read as markup
            record["status"],
            f"{record['progress']['epoch']}/{record['progress']['epochs']}",
            "" if accuracy is None else f"{accuracy:.4f}",
            record["model_id"] or "",
            record["created_at"][:19].replace("T", " "),
        )
    return table


def models_table(page: Page[Model]) -> Table:
    table = Table(title=f"models ({page.count})")
    for column in ("model_id", "name", "version", "dataset", "params", "accuracy", "created"):
        table.add_column(column, overflow="fold")
    for model in page:
        info = model.info
        dataset = info["dataset"].get("name") or info["dataset"].get("id") or ""
        accuracy = (info["evaluation"] or info["metrics"] or {}).get("accuracy")
        table.add_row(
            info["model_id"],
            Text(info["name"]),
            str(info["version"]),
            Text(str(dataset)),
            f"{info['total_params']:,}",
            "" if accuracy is None else f"{accuracy:.4f}",
            info["created_at"][:19].replace("T", " "),
        )
    return table


def predictions_table(model_id: str, answer: Predictions) -> Table:
    table = Table(title=Text(f"model {model_id}"))
    table.add_column("#", justify="right")
    table.add_column("class", justify="right")
    labels = answer.labels
    if labels:
        table.add_column("label")
    table.add_column("probability", justify="right")
    for i, (cls, row) in enumerate(zip(answer.classes.tolist(), answer.predictions.tolist(), strict=True)):
        probability = row[cls] if len(row) > 1 else (row[0] if cls == 1 else 1 - row[0])
        cells: list[str | Text] = [str(i), str(cls), *([Text(labels[i])] if labels else []), f"{probability:.4f}"]
        table.add_row(*cells)
    return table


def read_spec(path: Path) -> dict[str, Any]:
    try:
        spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainServeError(f"cannot read {path}: {exc}") from exc
    return spec
