"""The command line's side of the API: HTTP calls to a running service and their rendering with rich.

Imports neither TensorFlow nor the server, so the CLI starts in a blink."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
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
        """A job's (event, data) pairs until it ends, reconnecting with Last-Event-ID if the stream drops or the
        service ends it before the job (streams last at most TRAINSERVE_EVENT_STREAM_MAX_SECONDS)."""
        last_id: str | None = None
        attempt = 0
        while attempt < 30:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self._http() as http, http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
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
                                if event == "status" and payload.get("status") in FINISHED:
                                    return
                            event, data, event_id = "", "", None
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
                        elif line.startswith("id:"):
                            event_id = line[3:].strip()
                attempt = 0  # the service ended the stream before the job: go on at once
            except (httpx.TransportError, httpx.StreamError):
                attempt += 1
                time.sleep(min(0.5 * attempt, 5))
        raise ClientError(f"lost the event stream of job {job_id}")


def describe_error(response: httpx.Response) -> str:
    """The API's error shape as lines a person reads: the message, then each problem with its path."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"HTTP {response.status_code}: {body}"
    lines = [f"HTTP {response.status_code}: {error.get('message', '')}"]
    problems = error.get("errors") or []
    if len(problems) > 1 or (problems and problems[0].get("message") != error.get("message")):
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
