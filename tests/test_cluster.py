"""TrainServe on several hosts that share nothing but a network (tests/cluster.py): Redis, PostgreSQL and the
object store on one host, two API hosts, two worker hosts, every model, checkpoint and dataset in the object store.
Each test asserts what a user sees: job statuses, attempts, history rows, one model per job, predictions equal
across replicas. Needs root (network namespaces); CI runs as root."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.cluster import BUCKET, ServiceCluster, s3_client, skip_reason
from tests.conftest import chapter_request

reason = skip_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(reason is not None, reason=reason or "")]

EXAMPLES = Path(__file__).parent.parent / "examples"
FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceCluster]:
    cluster = ServiceCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def api1(cluster: ServiceCluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.api_url(cluster.api_hosts[0]), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def api2(cluster: ServiceCluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.api_url(cluster.api_hosts[1]), timeout=30) as client:
        yield client


def wait_for(api: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def host_of(job: dict[str, Any]) -> str:
    """The host whose worker runs (or ran) the job: its worker id is ``host:pid``."""
    return str(job["worker"]).rpartition(":")[0]


def models_of(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    listing = api.get("/models", params={"limit": 500}).json()["data"]
    return [model for model in listing if model["job_id"] == job_id]


def assert_one_continuous_run(api: httpx.Client, job: dict[str, Any], published: str | None = None) -> None:
    """Succeeded, every epoch once and in order, exactly one model (and the experiment's record of it, when the
    job is the trial its experiment ``published``)."""
    assert job["status"] == "succeeded", job["error"]
    assert [row["epoch"] for row in job["history"]] == list(range(1, job["progress"]["epochs"] + 1))
    models = {model["model_id"] for model in models_of(api, job["job_id"])} - {published}
    assert models == {job["model_id"]}


def object_keys(cluster: ServiceCluster, prefix: str) -> set[str]:
    listing = s3_client(cluster).list_objects_v2(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
    return {obj["Key"] for obj in listing.get("Contents", [])}


def long_job(epochs: int = 14) -> dict[str, Any]:
    """A seeded digits job of some tens of seconds here: small batches, many epochs."""
    body = chapter_request(epochs=epochs)
    body["fit"] |= {"batch_size": 8, "seed": 7}
    return body


def wait_until(predicate: Any, what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def test_the_six_optimizers_spread_over_both_workers_and_both_replicas_agree(
    cluster: ServiceCluster, api1: httpx.Client, api2: httpx.Client
) -> None:
    experiment = json.loads((EXAMPLES / "experiment_optimizers.json").read_text())
    experiment["base"]["fit"]["epochs"] = 4
    experiment["name"] = "six optimizers across hosts"
    created = api1.post("/experiments", json=experiment)
    assert created.status_code == 202, created.text
    experiment_id = created.json()["experiment_id"]

    def ended() -> dict[str, Any] | None:
        found: dict[str, Any] = api2.get(f"/experiments/{experiment_id}").json()  # followed through the other
        return found if found["status"] in FINISHED else None

    done = wait_until(ended, "the experiment did not end", timeout=400)
    assert done["status"] == "succeeded", done["error"]
    assert done["counts"]["complete"] == 6
    trials = [api1.get(f"/jobs/{trial['job_id']}").json() for trial in done["trials"]]
    assert {host_of(job) for job in trials} == {"worker1", "worker2"}, "both worker hosts trained trials"
    for job in trials:
        assert_one_continuous_run(api1, job, published=done["published_model_id"])

    # The published model, stored in the object store by a worker, is served by both API hosts alike.
    name = experiment["name"]
    x = load_digits().images[:16].tolist()
    answers = [api.post("/predict", json={"model": name, "instances": x}) for api in (api1, api2)]
    assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
    first, second = (np.array(answer.json()["predictions"]) for answer in answers)
    assert np.allclose(first, second, atol=1e-6)
    assert answers[0].json()["model_id"] == answers[1].json()["model_id"] == done["published_model_id"]
    tf_serving = api2.post(f"/v1/models/{name}:predict", json={"instances": x})
    assert np.allclose(np.array(tf_serving.json()["predictions"]), first, atol=1e-6)
    assert f"models/{done['published_model_id']}.keras" in object_keys(cluster, "models/")

    # Its exports and a trial's TensorBoard logs, written by a worker into the object store, through the other API.
    archive = api2.get(f"/models/{done['published_model_id']}/download", params={"format": "savedmodel"})
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert any(name.endswith("/saved_model.pb") for name in tar.getnames())
    logs = api2.get(f"/jobs/{trials[0]['job_id']}/tensorboard")
    assert logs.status_code == 200, logs.text
    with tarfile.open(fileobj=io.BytesIO(logs.content)) as tar:
        runs = {name.split("/")[1] for name in tar.getnames() if name.count("/") == 2}
    assert runs == {"train", "validation"}


def test_an_upload_through_one_replica_trains_on_a_worker_and_reads_back_through_the_other(
    cluster: ServiceCluster, api1: httpx.Client, api2: httpx.Client
) -> None:
    from tests.datafiles import blobs, npz_bytes

    x, y = blobs(300, features=6, classes=3, seed=3)
    content = npz_bytes(x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    uploaded = api1.post("/datasets", files={"file": ("blobs.npz", content)})
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    assert f"datasets/{dataset['dataset_id']}.npz" in object_keys(cluster, "datasets/")
    samples = api2.get(f"/datasets/{dataset['dataset_id']}/samples", params={"n": 2}).json()["samples"]
    assert np.allclose([sample["x"] for sample in samples], x[:2], atol=1e-6)
    download = api2.get(f"/datasets/{dataset['dataset_id']}/download")
    assert download.status_code == 200
    body = {
        "model": {"input_shape": [6], "layers": [{"type": "dense", "units": 3, "activation": "softmax"}]},
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
        "dataset": {"id": dataset["dataset_id"]},
        "fit": {"epochs": 3},
    }
    job = wait_for(api2, api1.post("/train", json=body).json()["job_id"])
    assert_one_continuous_run(api2, job)
    assert job["evaluation"] is not None


def test_an_idempotent_submit_retried_against_the_other_replica_returns_the_first_job(
    api1: httpx.Client, api2: httpx.Client
) -> None:
    body = chapter_request(epochs=2)
    headers = {"Idempotency-Key": f"retry-{time.monotonic_ns()}"}
    first = api1.post("/train", json=body, headers=headers)
    again = api2.post("/train", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert_one_continuous_run(api2, wait_for(api2, first.json()["job_id"]))


def test_a_worker_cut_off_mid_epoch_is_fenced_and_the_other_resumes_the_job(
    cluster: ServiceCluster, api1: httpx.Client
) -> None:
    """The lease of a cut-off worker runs out, the other worker resumes the job from its last checkpoint; when
    the cut-off worker comes back it publishes nothing, writes no epoch and does not end the job."""
    job_id = api1.post("/train", json=long_job()).json()["job_id"]
    running = wait_until(
        lambda: (
            (job := api1.get(f"/jobs/{job_id}").json())["status"] == "running" and job["progress"]["epoch"] >= 2 and job
        ),
        "the job did not reach its second epoch",
    )
    cut = next(host for host in cluster.worker_hosts if host.name == host_of(running))
    other = next(host for host in cluster.worker_hosts if host is not cut)
    cluster.net.cut(cut)
    cut_at = time.monotonic()
    try:
        moved = wait_until(
            lambda: (job := api1.get(f"/jobs/{job_id}").json())["attempts"] == 2 and job["status"] == "running" and job,
            "the job was not taken over",
            timeout=90,
        )
        taken_over_after = time.monotonic() - cut_at
        assert host_of(moved) == other.name
        assert moved["resumed_from_epoch"] is not None
        assert moved["resumed_from_epoch"] >= 1
        # Let the new attempt train past where the cut-off worker was, then plug the cable back in.
        wait_until(
            lambda: api1.get(f"/jobs/{job_id}").json()["progress"]["epoch"] >= running["progress"]["epoch"] + 2,
            "the new attempt did not train on",
        )
    finally:
        cluster.net.restore(cut)
    job = wait_for(api1, job_id)
    assert_one_continuous_run(api1, job)
    assert job["attempts"] == 2
    assert host_of(job) == other.name
    # The cut-off worker noticed, once back, that the job is no longer its own, and stopped.
    wait_until(
        lambda: (
            f"job {job_id} was taken over by another worker" in cluster.log(cut)
            or f"job {job_id}: model discarded" in cluster.log(cut)
        ),
        "the cut-off worker never learned it lost the job",
        timeout=120,
    )
    time.sleep(2)
    after = api1.get(f"/jobs/{job_id}").json()
    assert (after["status"], after["attempts"], after["model_id"]) == ("succeeded", 2, job["model_id"])
    assert after["history"] == job["history"], "nothing written into the new attempt's history"
    assert len(models_of(api1, job_id)) == 1
    # Its TensorBoard logs are the second attempt's, the epochs before the cut carried over from the first's.
    logs = api1.get(f"/jobs/{job_id}/tensorboard")
    assert logs.status_code == 200, logs.text
    with tarfile.open(fileobj=io.BytesIO(logs.content)) as tar:
        names = [name for name in tar.getnames() if ".tfevents." in name]
    assert names
    assert all(".trainserve.a2." in name for name in names), names
    # The checkpoints of both attempts go: the winner's when the job ends, the cut-off one's by a reconciler.
    wait_until(
        lambda: not [key for key in object_keys(cluster, "checkpoints/") if job_id in key],
        f"checkpoints of job {job_id} stayed in the object store: {object_keys(cluster, 'checkpoints/')}",
        timeout=60,
    )
    print(f"taken over {taken_over_after:.1f} s after the cut (lease {cluster.lease_seconds:g} s)")


def test_a_redis_host_restarted_empty_loses_no_job_and_runs_none_twice(
    cluster: ServiceCluster, api1: httpx.Client, api2: httpx.Client
) -> None:
    jobs = [api1.post("/train", json=long_job(epochs=4)).json()["job_id"] for _ in range(5)]
    wait_until(lambda: api1.get(f"/jobs/{jobs[0]}").json()["status"] == "running", "no job started")
    cluster.stop_redis()
    time.sleep(2)
    cluster.start_redis()  # nothing kept: every waiting message and marker is gone
    for job_id in jobs:
        assert_one_continuous_run(api2, wait_for(api2, job_id, timeout=400))


def test_a_postgresql_restart_mid_training_costs_a_pause(cluster: ServiceCluster, api1: httpx.Client) -> None:
    job_id = api1.post("/train", json=long_job()).json()["job_id"]
    wait_until(lambda: api1.get(f"/jobs/{job_id}").json()["progress"]["epoch"] >= 2, "the job did not reach epoch 2")
    cluster.stop_postgres()
    down = api1.get(f"/jobs/{job_id}")
    assert down.status_code == 503, down.text
    assert down.json()["error"]["type"] == "database_unavailable"
    time.sleep(4)
    cluster.start_postgres()
    job = wait_for(api1, job_id)
    assert_one_continuous_run(api1, job)
    assert job["attempts"] == 1, "the worker's writes waited for the database instead of losing the job"
