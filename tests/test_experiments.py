"""Experiments end to end: real Celery workers (two processes), a real Redis, real training on digits, Optuna's
samplers and pruners on the service's own database.

The chapter's six optimizers as one grid experiment, random and TPE searches that keep to their trial budget and
their parallelism, a pruner that must stop a hopeless trial, a cancel that leaves nothing running, and search
spaces that cannot make a valid model, refused at submit with their path or, too large to check whole, trial by
trial.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.examples import experiment_examples
from service.exports import safe_name
from service.settings import Settings
from tests.conftest import chapter_request, running_worker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def two_workers(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Two worker processes (one training process each) on a queue of their own."""
    own = settings.model_copy(update={"queue": "experiments"})
    logs = tmp_path_factory.mktemp("experiment-workers")
    with running_worker(own, logs / "a.log"), running_worker(own, logs / "b.log"):
        yield own


@pytest.fixture(scope="module")
def api(two_workers: Settings) -> Iterator[TestClient]:
    from service.api.app import create_app

    with TestClient(create_app(two_workers)) as client:
        yield client


def quick(body: dict[str, Any], epochs: int = 3) -> dict[str, Any]:
    """An example experiment with fewer epochs per trial."""
    body = json.loads(json.dumps(body))
    body["base"]["fit"]["epochs"] = epochs
    return body


class Watch:
    """Polls an experiment until it ends, noting the most trials that were queued or running at once."""

    def __init__(self, api: TestClient, experiment_id: str) -> None:
        self.api = api
        self.experiment_id = experiment_id
        self.most_active = 0
        self.seen_running: set[str] = set()

    def until_finished(self, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            experiment: dict[str, Any] = self.api.get(f"/experiments/{self.experiment_id}").json()
            active = [t for t in experiment["trials"] if t["state"] in ("queued", "running")]
            self.most_active = max(self.most_active, len(active))
            if experiment["status"] != "running":
                return experiment
            time.sleep(0.1)
        raise TimeoutError(f"experiment {self.experiment_id} did not end")


def start(api: TestClient, body: dict[str, Any]) -> str:
    answer = api.post("/experiments", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"] == f"/experiments/{answer.json()['experiment_id']}"
    experiment_id: str = answer.json()["experiment_id"]
    return experiment_id


def test_the_example_files_are_the_experiments_the_service_documents() -> None:
    files = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (ROOT / "examples").glob("experiment_*.json")}
    assert files == experiment_examples(), "regenerate with: python -m service.examples examples"


def test_the_chapters_six_optimizers_are_one_grid_experiment(api: TestClient) -> None:
    body = quick(experiment_examples()["experiment_optimizers"])
    answer = api.post("/experiments", json=body)
    assert answer.status_code == 202, answer.text
    assert (answer.json()["trials"], answer.json()["checked"]) == (6, 6)  # six distinct trials, each dry-built
    experiment_id = answer.json()["experiment_id"]
    events: list[tuple[str, dict[str, Any]]] = []
    follower = threading.Thread(target=_follow, args=(api, experiment_id, events))
    follower.start()
    watch = Watch(api, experiment_id)
    experiment = watch.until_finished()
    follower.join(timeout=30)

    assert experiment["status"] == "succeeded", experiment
    trials = experiment["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    assert all(t["state"] == "complete" for t in trials), trials
    optimizers = [json.dumps(t["params"]["compile.optimizer"], sort_keys=True) for t in trials]
    expected = [json.dumps(v, sort_keys=True) for v in body["space"]["compile.optimizer"]["values"]]
    assert sorted(optimizers) == sorted(expected), "each optimizer once"
    assert watch.most_active <= 2 == body["max_parallel"]
    # Each trial is an ordinary job with a link to its experiment, trained by either worker.
    workers = set()
    for trial in trials:
        job = api.get(f"/jobs/{trial['job_id']}").json()
        assert job["trial"] == {"experiment_id": experiment_id, "number": trial["number"], "params": trial["params"]}
        chosen = trial["params"]["compile.optimizer"]
        chosen = {"type": chosen} if isinstance(chosen, str) else chosen
        assert job["spec"]["compile"]["optimizer"] == job["spec"]["compile"]["optimizer"] | chosen
        assert trial["objective"] == job["evaluation"]["accuracy"]
        workers.add(job["worker"])
    assert len(workers) == 2, "the trials ran on both workers"
    # The best trial is the one with the highest held-out accuracy (the earliest of equals).
    best = max(trials, key=lambda t: (t["objective"], -t["number"]))
    assert experiment["best"]["number"] == best["number"]
    assert experiment["best"]["objective"] == best["objective"]
    # ... and its model is published under the experiment's name.
    published = api.get(f"/models/{experiment['published_model_id']}").json()
    assert (published["name"], published["version"]) == (body["name"], 1)
    trained = api.get(f"/models/{best['model_id']}").json()
    assert published["sha256"] == trained["sha256"]
    # Its exports too, each the trial's file, in TensorFlow Serving's layout under the experiment's name.
    assert published["exports"] == trained["exports"]
    archive = api.get(f"/models/{published['model_id']}/download", params={"format": "savedmodel"})
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert f"{safe_name(body['name'])}/1/saved_model.pb" in tar.getnames()
    digit = [[0.0] * 8 for _ in range(8)]
    by_name = api.post("/predict", json={"model": body["name"], "instances": [digit]}).json()
    by_trial = api.post("/predict", json={"model_id": best["model_id"], "instances": [digit]}).json()
    assert by_name["predictions"] == by_trial["predictions"]
    # The event stream told every trial's end and the experiment's.
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "experiment"
    assert events[-1][1]["status"] == "succeeded"
    finished = {data["number"] for kind, data in events if kind == "trial" and data["state"] == "complete"}
    assert finished == set(range(6))
    listed = api.get("/experiments", params={"limit": 50}).json()
    mine = next(e for e in listed["data"] if e["experiment_id"] == experiment_id)
    assert mine["counts"] == {"complete": 6}
    assert mine["trials"] is None


def _follow(api: TestClient, experiment_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    with api.stream("GET", f"/experiments/{experiment_id}/events") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind is not None:
                events.append((kind, json.loads(line.removeprefix("data: "))))


@pytest.mark.parametrize("search", ["random", "tpe"])
def test_a_search_keeps_to_its_trials_and_its_parallelism(api: TestClient, search: str) -> None:
    body = {
        "name": f"learning rate, {search}",
        "base": chapter_request(epochs=2),
        "space": {
            "compile.optimizer.learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "fit.batch_size": {"type": "choice", "values": [16, 32, 64]},
        },
        "search": {"type": search, "seed": 7},
        "objective": {"metric": "val_accuracy", "source": "best_epoch"},
        "max_trials": 5,
        "max_parallel": 2,
    }
    watch = Watch(api, start(api, body))
    experiment = watch.until_finished()
    assert experiment["status"] == "succeeded", experiment
    assert len(experiment["trials"]) == 5 == experiment["trials_asked"]
    assert 1 <= watch.most_active <= 2
    rates = [t["params"]["compile.optimizer.learning_rate"] for t in experiment["trials"]]
    assert all(1e-4 <= r <= 0.1 for r in rates)
    assert len(set(rates)) == 5
    for trial in experiment["trials"]:
        history = api.get(f"/jobs/{trial['job_id']}").json()["history"]
        assert trial["objective"] == max(row["val_accuracy"] for row in history)


def test_the_median_pruner_stops_a_hopeless_trial(api: TestClient) -> None:
    """The first trial learns; the second learns at a millionth of its rate, so its validation accuracy stays
    near chance, below the first trial's at every epoch: the median pruner (one trial of start-up, one epoch of
    warm-up) must stop it at epoch 2. One trial at a time, in the order they are enqueued."""
    rate = "compile.optimizer.learning_rate"
    base = chapter_request(epochs=8)
    base["compile"]["optimizer"] = {"type": "adam"}
    body = {
        "name": "a pruned trial",
        "base": base,
        "space": {rate: {"type": "choice", "values": [0.01, 1e-8]}},
        "search": {"type": "random", "seed": 3},
        "objective": {"metric": "accuracy", "source": "evaluation"},
        "enqueue": [{rate: 0.01}, {rate: 1e-8}],
        "max_trials": 2,
        "max_parallel": 1,
        "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
    }
    experiment = Watch(api, start(api, body)).until_finished()
    assert experiment["status"] == "succeeded", experiment
    good, hopeless = experiment["trials"]
    assert good["params"] == {rate: 0.01}
    assert good["state"] == "complete"
    assert hopeless["state"] == "pruned", hopeless
    assert hopeless["stopped_epoch"] == 2
    assert hopeless["progress"]["epoch"] == 2
    assert hopeless["stop_reason"].startswith("pruned by the median pruner at epoch 2: val_accuracy")
    assert experiment["best"]["number"] == good["number"]
    curves = api.get(f"/experiments/{experiment['experiment_id']}/curves", params={"metric": "val_accuracy"}).json()
    assert [len(c["epochs"]) for c in curves["trials"]] == [8, 2]  # cut short where it was pruned


def test_cancelling_an_experiment_leaves_no_trial_running(api: TestClient) -> None:
    base = chapter_request(epochs=200)
    base["fit"]["batch_size"] = 8
    body = {
        "name": "to be cancelled",
        "base": base,
        "space": {"model.layers[1].units": {"type": "int", "low": 10, "high": 200}},
        "search": {"type": "random", "seed": 1},
        "objective": {"metric": "accuracy"},
        "max_trials": 10,
        "max_parallel": 2,
    }
    experiment_id = start(api, body)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        trials = api.get(f"/experiments/{experiment_id}").json()["trials"]
        if any(t["state"] == "running" and t["progress"]["epoch"] >= 1 for t in trials):
            break
        time.sleep(0.1)
    answer = api.post(f"/experiments/{experiment_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["cancel_requested"] is True
    experiment = Watch(api, experiment_id).until_finished(timeout=60)
    assert experiment["status"] == "cancelled"
    assert experiment["trials_asked"] == 2, "no trial asked after the cancel"
    assert {t["state"] for t in experiment["trials"]} == {"cancelled"}
    assert api.post(f"/experiments/{experiment_id}/cancel").json()["status"] == "cancelled"


def test_a_space_that_can_make_an_invalid_model_is_refused_with_its_path(api: TestClient) -> None:
    base = chapter_request(epochs=1)

    def refused(space: dict[str, Any], **more: Any) -> list[dict[str, Any]]:
        answer = api.post("/experiments", json={"base": base, "space": space, **more})
        assert answer.status_code == 422, answer.text
        errors: list[dict[str, Any]] = answer.json()["error"]["errors"]
        return errors

    errors = refused({"model.layers[1].units": {"type": "choice", "values": [100, 0]}})
    assert [e["loc"] for e in errors] == [["space", "model.layers[1].units"]]
    assert "model.layers[1].units = 0" in errors[0]["message"]
    assert "greater than or equal to 1" in errors[0]["message"]

    errors = refused({"model.layers[1].activation": {"type": "choice", "values": ["relu", "sigmoidd"]}})
    assert errors[0]["loc"] == ["space", "model.layers[1].activation"]
    assert '"sigmoidd"' in errors[0]["message"]

    errors = refused({"model.layers[7].units": {"type": "choice", "values": [10]}})
    assert "the request has no field model.layers[7].units" in errors[0]["message"]

    errors = refused({"fit.batch_size": {"type": "float", "low": 8, "high": 64}}, search={"type": "grid"})
    assert errors[0]["loc"] == ["space", "fit.batch_size"]
    assert "grid search takes each value once" in errors[0]["message"]

    errors = refused({"compile.optimizer": {"type": "choice", "values": ["adam"]}}, objective={"metric": "auc"})
    assert errors[0]["loc"] == ["objective", "metric"]

    errors = refused({"model.layers[1].units": {"type": "int", "low": 1, "high": 9}}, max_trials=100_000)
    assert errors[0]["loc"] == ["max_trials"]


def test_trials_of_a_space_too_large_to_check_whole_are_checked_one_by_one(api: TestClient) -> None:
    """Units from ten million: every trial's model is over the parameter limit. Such a space is not dry-built
    whole at submit; each trial is refused before it is queued, recorded and never run."""
    body = {
        "name": "too wide",
        "base": chapter_request(epochs=1),
        "space": {"model.layers[1].units": {"type": "int", "low": 10_000_000, "high": 20_000_000}},
        "search": {"type": "random", "seed": 0},
        "max_trials": 3,
    }
    answer = api.post("/experiments", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json()["checked"] == 0
    experiment = Watch(api, answer.json()["experiment_id"]).until_finished(timeout=60)
    assert experiment["status"] == "failed"
    assert experiment["error"] == "no trial ended with an objective value"
    assert [t["state"] for t in experiment["trials"]] == ["refused"] * 3
    for trial in experiment["trials"]:
        assert trial["error"]["type"] == "RefusedTrial"
        assert trial["error"]["message"].startswith("space.model.layers[1].units: with model.layers[1].units = ")
        assert trial["progress"]["epoch"] == 0
        assert api.get(f"/jobs/{trial['job_id']}").json()["started_at"] is None


def test_unknown_experiments_are_404(api: TestClient) -> None:
    missing = "0" * 32
    for method, path in (("GET", ""), ("GET", "/curves"), ("POST", "/cancel"), ("GET", "/events")):
        answer = api.request(method, f"/experiments/{missing}{path}")
        assert answer.status_code == 404, (path, answer.text)
    assert httpx.codes.is_error(api.get("/experiments/not-an-id").status_code)


def test_an_experiment_left_with_nothing_to_advance_it_is_taken_up_by_the_reconciler(
    api: TestClient, two_workers: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API process dies right after recording an experiment, before asking its first trials (advance does
    nothing here, as a dead process would); a lease's length later, a worker's reconciler hands it to a pool
    process, which asks its trials, and it ends as any other."""
    from datetime import timedelta

    from sqlalchemy import update

    from service import experiments
    from service.db import ExperimentRow, session_scope, utcnow
    from service.queue import JobQueue
    from service.spec.experiment import ExperimentRequest
    from worker.reconciler import reconcile

    body = quick(experiment_examples()["experiment_activation"], epochs=1)
    queue = JobQueue(two_workers)
    with monkeypatch.context() as crashed:
        crashed.setattr(experiments, "advance", lambda *args: None)
        with session_scope(two_workers.database_url) as session:
            created = experiments.create_experiment(
                ExperimentRequest.model_validate(body), session=session, settings=two_workers, queue=queue
            )
    experiment_id = created.experiment_id
    assert api.get(f"/experiments/{experiment_id}").json()["trials"] == []
    assert experiment_id not in reconcile(two_workers, queue).advanced, "not before a lease's length"
    with session_scope(two_workers.database_url) as session:
        session.execute(
            update(ExperimentRow)
            .where(ExperimentRow.id == experiment_id)
            .values(created_at=utcnow() - timedelta(hours=1))
        )
    assert reconcile(two_workers, queue).advanced == [experiment_id]
    assert experiment_id not in reconcile(two_workers, queue).advanced, "one request waiting at a time"
    experiment = Watch(api, experiment_id).until_finished(timeout=120)
    assert experiment["status"] == "succeeded", experiment
    assert len(experiment["trials"]) == 2
    queue.close()
