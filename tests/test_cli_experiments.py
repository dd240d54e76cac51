"""`trainserve experiment`, run as a user runs it against the API served by uvicorn and a real worker: on a
terminal (a pseudo-terminal here) it redraws a leaderboard, piped it prints a line per trial change; either way it
ends with the final table and the best trial, and exits with the experiment's outcome. Then what its cells say of
values and trials the short runs here do not make (optimizer objects, schedules, pruned trials)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import datetime
from fcntl import ioctl
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from bench.processes import serving
from service.embedded import free_port
from service.experiments import STOP_PRUNED
from service.settings import Settings
from service.terminal import Leaderboard
from tests.conftest import WorkerProcess, settings_env
from tests.test_cli import spec_file, trainserve
from trainserve.experiments import compact, stop_text
from trainserve.records import ExperimentRecord as Experiment
from trainserve.records import TrialRecord as Trial

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def short_streams_url(
    settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second `trainserve api` on the same database and queue whose event streams end after a second, as a
    proxy's idle timeout or TRAINSERVE_EVENT_STREAM_MAX_SECONDS ends them: a watch reconnects many times."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "service.cli", "api", "--port", url.rpartition(":")[2]]
    env = settings_env(settings) | {"TRAINSERVE_EVENT_STREAM_MAX_SECONDS": "1"}
    with serving(command, env, tmp_path_factory.mktemp("short-streams") / "api.log", f"{url}/healthz"):
        yield url


def activation_experiment(epochs: int = 2, **fit: Any) -> dict[str, Any]:
    """examples/experiment_activation.json (sigmoid or relu, a grid of two) with fewer epochs per trial."""
    body: dict[str, Any] = json.loads((ROOT / "examples" / "experiment_activation.json").read_text(encoding="utf-8"))
    body["base"]["fit"] |= {"epochs": epochs, **fit}
    return body


def on_a_terminal(url: str, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run `trainserve` on a pseudo-terminal 160 columns wide; its exit code, what it wrote (escapes and all),
    and that text with the escapes taken out."""
    leader, follower = pty.openpty()
    ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TRAINSERVE_URL": url, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    env.pop("COLUMNS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args], stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    written = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # Linux: every end of the terminal's other side is closed
                break
            if not chunk:
                break
            written += chunk
        code = process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        process.kill()
        os.close(leader)
    raw = written.decode("utf-8", errors="replace")
    return code, raw, ANSI.sub("", raw).replace("\r", "")


def table_rows(text: str) -> list[list[str]]:
    """The header and body rows of the tables in `text`, as their cells."""
    rows = []
    for line in text.splitlines():
        if line[:1] in ("┃", "│"):
            rows.append([cell.strip() for cell in re.split("[┃│]", line.strip("┃│"))])
    return rows


@pytest.mark.slow
def test_the_leaderboard_is_redrawn_on_a_terminal_and_ends_with_the_best_trial(live_url: str, tmp_path: Path) -> None:
    spec = spec_file(tmp_path, activation_experiment(), "experiment.json")
    code, raw, text = on_a_terminal(live_url, "experiment", spec, "--watch")
    assert code == 0, text
    submitted = re.search(r"experiment ([0-9a-f]{32}) running: 2 trials \(2 dry-built at submit\)", text)
    assert submitted, text
    experiment = httpx.get(f"{live_url}/experiments/{submitted[1]}").json()
    assert experiment["status"] == "succeeded"
    best = experiment["best"]

    assert "\x1b[1A" in raw, "the table is redrawn in place"
    assert "trial 0 complete" not in text, "no line per change on a terminal"
    title = "digits: sigmoid or relu · succeeded · 2 complete of 2 · best "
    assert f"{title}#{best['number']} accuracy {best['objective']:.4f}" in text
    final = text[text.rindex(title) :]
    header, *rows = table_rows(final)[:3]
    assert header[:4] == ["#", "state", "accuracy ↑", "epoch"]
    assert header[4:] == ["model.layers[1].activation", "stop"]
    assert sorted(row[4] for row in rows) == ["relu", "sigmoid"]
    by_number = {t["number"]: t for t in experiment["trials"]}
    for row in rows:
        trial = by_number[int(row[0])]
        assert row[1:5] == [
            "complete",
            f"{trial['objective']:.4f}",
            "2/2",
            trial["params"]["model.layers[1].activation"],
        ]
    assert [float(row[2]) for row in rows] == sorted((float(row[2]) for row in rows), reverse=True)
    assert int(rows[0][0]) == best["number"], "the best trial leads"

    assert f"succeeded: published model {experiment['published_model_id']} (digits: sigmoid or relu)" in final
    line = f"best trial {best['number']}: accuracy {best['objective']:.4f} (evaluation), model {best['model_id']}"
    assert line in final
    assert f"  model.layers[1].activation = {best['params']['model.layers[1].activation']}" in final

    listing = trainserve(live_url, "experiments", "--status", "succeeded")
    assert listing.returncode == 0, listing.stderr
    assert submitted[1] in listing.stdout


@pytest.mark.slow
def test_piped_it_prints_a_line_per_trial_change_across_streams_the_service_ends(
    short_streams_url: str, tmp_path: Path
) -> None:
    live_url = short_streams_url
    result = trainserve(live_url, "experiment", spec_file(tmp_path, activation_experiment(), "piped.json"), "--watch")
    assert result.returncode == 0, result.stdout + result.stderr
    experiment_id = result.stdout.split()[1]
    experiment = httpx.get(f"{live_url}/experiments/{experiment_id}").json()
    took = datetime.fromisoformat(experiment["finished_at"]) - datetime.fromisoformat(experiment["created_at"])
    assert took.total_seconds() > 2, "the experiment outlived a stream"
    lines = result.stdout.splitlines()
    for trial in experiment["trials"]:
        number, activation = trial["number"], trial["params"]["model.layers[1].activation"]
        own = [line for line in lines if line.startswith(f"trial {number} ")]
        # Each change once, though every new stream tells every trial again; one quicker than the stream's poll
        # is not seen.
        states = [line.split()[2] for line in own]
        assert states == [state for state in ("queued", "running", "complete") if state in states]
        assert own[-1] == (
            f"trial {number} complete  accuracy {trial['objective']:.4f}  epoch 2/2  "
            f"model.layers[1].activation={activation}"
        )
    assert "\x1b" not in result.stdout
    assert f"best trial {experiment['best']['number']}: accuracy {experiment['best']['objective']:.4f}" in result.stdout


@pytest.mark.slow
def test_a_space_that_can_make_an_invalid_model_is_refused_with_its_path(live_url: str, tmp_path: Path) -> None:
    body = activation_experiment()
    body["space"] = {"model.layers[1].units": {"type": "choice", "values": [100, 0]}}
    result = trainserve(live_url, "experiment", spec_file(tmp_path, body, "zero.json"), "--watch")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, "one problem, one line"
    assert re.fullmatch(r"HTTP 422: \S+: with model\.layers\[1\]\.units = 0: .*greater than or equal to 1", lines[0])

    missing = trainserve(live_url, "experiment", str(tmp_path / "missing.json"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


@pytest.mark.slow
def test_ctrl_c_stops_watching_and_experiment_cancel_stops_the_experiment(live_url: str, tmp_path: Path) -> None:
    spec = spec_file(tmp_path, activation_experiment(epochs=300, batch_size=8), "long.json")
    env = {**os.environ, "TRAINSERVE_URL": live_url, "COLUMNS": "200", "NO_COLOR": "1"}
    watching = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "experiment", spec, "--watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background commands with SIGINT ignored, and Python keeps it so:
        # the command gets Ctrl-C's signal as a terminal would give it, whatever ran these tests.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert watching.stdout is not None
        experiment_id = watching.stdout.readline().split()[1]
        while not watching.stdout.readline().startswith("trial 0 running"):
            assert watching.poll() is None
        watching.send_signal(signal.SIGINT)
        out, err = watching.communicate(timeout=30)
    finally:
        watching.kill()
    assert watching.returncode == 130, out + err
    assert f"stopped watching; experiment {experiment_id} goes on" in out
    assert httpx.get(f"{live_url}/experiments/{experiment_id}").json()["status"] == "running"

    cancelled = trainserve(live_url, "experiment-cancel", experiment_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"experiment {experiment_id} ")
    deadline = time.monotonic() + 60
    while (status := httpx.get(f"{live_url}/experiments/{experiment_id}").json()["status"]) == "running":
        assert time.monotonic() < deadline, "the cancelled experiment ended"
        time.sleep(0.2)
    assert status == "cancelled"
    listing = trainserve(live_url, "experiments", "--status", "cancelled")
    assert experiment_id in listing.stdout

    unknown = trainserve(live_url, "experiment-cancel", "0" * 32)
    assert unknown.returncode == 2
    assert "HTTP 404" in unknown.stderr


def trial(number: int, state: str, objective: float | None, **more: Any) -> Trial:
    row: dict[str, Any] = {
        "number": number,
        "job_id": f"{number:032x}",
        "state": state,
        "params": {"compile.optimizer": "adam"},
        "objective": objective,
        "progress": {"epoch": 0, "epochs": 10},
        "last": None,
        "stopped_epoch": None,
        "stop_reason": None,
        "model_id": None,
        "error": None,
    }
    return cast(Trial, row | more)


def test_a_cell_says_a_value_in_few_words() -> None:
    nesterov = {"type": "sgd", "learning_rate": 0.01, "momentum": 0.9, "nesterov": True}
    assert compact(nesterov) == "sgd learning_rate=0.01 momentum=0.9 nesterov"
    assert compact(nesterov | {"nesterov": False}) == "sgd learning_rate=0.01 momentum=0.9"
    schedule = {"type": "exponential_decay", "initial_learning_rate": 0.1, "decay_steps": 100}
    assert compact({"type": "adam", "learning_rate": schedule}) == (
        "adam learning_rate=(exponential_decay initial_learning_rate=0.1 decay_steps=100)"
    )
    assert [compact(v) for v in ("relu", 2.8852341e-05, 64, [64, 32], None)] == [
        "relu",
        "2.885e-05",
        "64",
        "[64, 32]",
        "null",
    ]

    # The reasons as worker/trials.py and worker/training.py word them.
    pruned = f"{STOP_PRUNED} by the successive halving pruner at epoch 3: val_loss 2.1 fell behind the other trials'"
    assert stop_text(trial(0, "pruned", 0.5, stop_reason=pruned)) == "pruned (successive halving) at epoch 3"
    early = "early_stopping: val_loss did not improve for 2 epochs after epoch 5 (val_loss 0.0567605)"
    assert stop_text(trial(0, "complete", 0.9, stop_reason=early, stopped_epoch=7)) == "early stopping at epoch 7"
    refused = "space.model.layers[1].units: with model.layers[1].units = 0: Input should be greater than or equal to 1"
    error = {"type": "RefusedTrial", "message": refused}
    assert stop_text(trial(0, "refused", None, error=error)) == "Input should be greater than or equal to 1"
    lost = {"type": "WorkerLost", "message": "the worker died 3 times"}
    assert stop_text(trial(0, "failed", None, error=lost)) == "WorkerLost"


def test_the_leaderboard_ranks_complete_trials_by_objective_then_pruned_then_unfinished() -> None:
    experiment = {
        "name": "loss",
        "status": "running",
        "cancel_requested": False,
        "objective": {"metric": "loss", "direction": "min", "source": "evaluation"},
        "params": ["compile.optimizer"],
        "max_trials": 6,
        "best": {"number": 3, "job_id": "", "objective": 0.2, "params": {}, "model_id": None},
    }
    board = Leaderboard(cast(Experiment, experiment))
    for row in (
        trial(0, "running", None),
        trial(1, "complete", 0.4),
        trial(2, "pruned", 0.1),  # lower, but from a shorter fit
        trial(3, "complete", 0.2),
        trial(4, "failed", None),
        trial(5, "queued", None),
    ):
        board.trials[row["number"]] = row
    assert [t["number"] for t in board.ranked()] == [3, 1, 2, 0, 4, 5]
    assert (
        str(board.title())
        == "loss · running · 2 complete, 1 pruned, 1 running, 1 queued, 1 failed of 6 · best #3 loss 0.2000"
    )
