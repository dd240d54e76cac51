"""``python -m bench``: this service against plain baselines, side by side on this machine, as ratios.

1. Training: one 5-epoch job of the chapter's 784-100-10 model on a Fashion-MNIST-sized dataset through the whole
   service (POST /train → queue → worker → model stored → job polled as succeeded) against the same work as a
   plain script in this process: load the data, build, ``model.fit``, evaluate.
2. Small requests (one 28×28 instance in the dataset's 0–255 units): requests per second of this service's
   /predict against the ceiling (a bare Starlette route that parses the same body with orjson and answers a fixed
   prediction), an empty FastAPI route that only ``json.loads`` the same body into NumPy, KServe's model server on
   the same ``.keras`` file (bench/kserve_peer.py) and a naive ``model.predict`` route, at 1 and at 16 concurrent
   clients.
3. One 10,000-instance request to /predict as JSON and as ``.npy``, against ``predict_on_batch`` on the same
   10,000 instances in this process.
4. The chapter's comparison of six optimizers as one experiment (``examples/experiment_optimizers.json`` on the
   Fashion-MNIST-sized dataset, two training processes) against the six learners' scripts (each trial's own
   ``GET /jobs/{id}/script``) run one after another, each a fresh ``python script.py``.

Everything runs locally (a private Redis, one worker, SQLite, a temporary directory); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.data import write_fashion_mnist
from bench.load import Target, http_request, throughputs, timed
from bench.processes import serving
from service.embedded import free_port
from trainserve import Client

HOST = "127.0.0.1"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fashion_mnist_sigmoid.json"
KSERVE_MODEL = "fashion"  # bench/kserve_peer.py's model name


def train_in_service(base: str, spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """POST /train, then follow the job's event stream, as `trainserve train --watch` does, until it ends."""
    with Client(base) as client:
        start = time.perf_counter()
        followed = client.train(spec)
        for _event in followed.events():
            pass
        seconds = time.perf_counter() - start
        job: dict[str, Any] = dict(followed.refresh().record)
    if job["status"] != "succeeded":
        raise RuntimeError(f"the benchmark's training job failed: {job['error']}")
    return seconds, job


def train_in_process(spec: dict[str, Any]) -> tuple[float, float]:
    """The same training as a plain Keras script (load, scale, seed, build, default compile(), fit, evaluate): its
    seconds and its last val_loss."""
    import keras
    import tensorflow as tf

    start = time.perf_counter()
    (x, y), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    rescale = np.float32(spec["dataset"]["rescale"])
    x, x_test = x * rescale, x_test * rescale
    # As the book's notebooks start, and as the service trains a request with a seed.
    keras.utils.set_random_seed(spec["fit"]["seed"])
    tf.config.experimental.enable_op_determinism()
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="sigmoid"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=spec["compile"]["optimizer"], loss=spec["compile"]["loss"], metrics=["accuracy"])
    fit = spec["fit"]
    history = model.fit(
        x,
        y.astype(np.int64),
        epochs=fit["epochs"],
        batch_size=fit["batch_size"],
        validation_split=fit["validation_split"],
        verbose=0,
    )
    model.evaluate(x_test, y_test.astype(np.int64), batch_size=256, verbose=0)
    return time.perf_counter() - start, float(history.history["val_loss"][-1])


def warm_up_keras() -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="rmsprop", loss="mse")
    model.fit(np.zeros((8, 4)), np.zeros((8, 2)), verbose=0)


def npy(x: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds each route is loaded, in slices")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each 10,000-instance request")
    parser.add_argument("--training-runs", type=int, default=3, help="training runs on each side (fastest counts)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="trainserve-bench-"))
    keras_home = workdir / "keras"
    print(f"working in {workdir}; generating a Fashion-MNIST-sized dataset …", flush=True)
    write_fashion_mnist(keras_home)
    os.environ["KERAS_HOME"] = str(keras_home)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRAINSERVE_")},
        "TRAINSERVE_HOME": str(workdir / "data"),
        "TRAINSERVE_KERAS_CACHE": str(keras_home),
        "TRAINSERVE_LOG_LEVEL": "WARNING",  # no access log line per request, as for the baselines
        # Two training processes, one per core: an experiment's trials train two at a time.
        "TRAINSERVE_WORKER_CONCURRENCY": "2",
    }
    spec = json.loads(EXAMPLE.read_text())
    spec["name"] = "bench"
    trainserve = str(Path(sys.executable).with_name("trainserve"))
    service_port, reference_port = free_port(), free_port()
    base = f"http://{HOST}:{service_port}"
    rows: list[tuple[str, str, str, str]] = []
    try:
        with serving([trainserve, "serve", "--port", str(service_port)], env, workdir / "serve.log", f"{base}/readyz"):
            # Other work on a shared machine only ever adds time: each side runs several times, alternating, and its
            # fastest run counts. TensorFlow's one-time start-up is paid before either is timed.
            warm_up_keras()
            plain_fits, service_fits = [], []
            plain_loss = service_loss = math.nan
            for attempt in range(1, args.training_runs + 1):
                print(f"training run {attempt}: plain Keras in this process …", flush=True)
                seconds, plain_loss = train_in_process(spec)
                plain_fits.append(seconds)
                print(f"  {seconds:.1f} s; the same job through the service …", flush=True)
                seconds, job = train_in_service(base, spec)
                service_fits.append(seconds)
                service_loss = job["history"][-1]["val_loss"]
                print(f"  {seconds:.1f} s ({job['execution']})", flush=True)
            plain_fit, service_fit = min(plain_fits), min(service_fits)
            rows.append(
                (
                    "5-epoch training job, POST /train → succeeded",
                    f"{service_fit:.1f} s",
                    f"plain load + fit + evaluate: {plain_fit:.1f} s",
                    f"{service_fit / plain_fit:.2f}× the time (target ≤ 0.6×)",
                )
            )
            rows.append(
                (
                    "the same job's last val_loss",
                    f"{service_loss:.6g}",
                    f"plain script's: {plain_loss:.6g}",
                    f"differs by {abs(service_loss - plain_loss):.1e} (target ≤ 1e-3)",
                )
            )
            model_id = job["model_id"]
            model_file = workdir / "data" / "models" / f"{model_id}.keras"
            reference_url = f"http://{HOST}:{reference_port}"
            with serving(
                [
                    sys.executable,
                    "-m",
                    "bench.reference",
                    "--port",
                    str(reference_port),
                    "--model",
                    str(model_file),
                    "--rescale",
                    str(spec["dataset"]["rescale"]),
                ],
                env,
                workdir / "reference.log",
                f"{reference_url}/docs",
            ):
                with kserve_peer(model_file, spec, env, workdir) as peer:
                    rows += small_requests(model_id, service_port, reference_port, peer, args.duration)
                rows += large_request(model_id, model_file, service_port, spec, args.repeat)
            rows += experiment(base, env, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)


@contextmanager
def kserve_peer(model_file: Path, spec: dict[str, Any], env: dict[str, str], workdir: Path) -> Iterator[int | str]:
    """KServe's model server on the same file (bench/kserve_peer.py): its port, or why it cannot run here."""
    try:
        import kserve  # noqa: F401  (only whether it is installed)
    except ImportError:
        yield "kserve is not installed (pip install -e '.[test]' brings it)"
        return
    port = free_port()
    command = [sys.executable, "-m", "bench.kserve_peer", "--port", str(port), "--model", str(model_file)]
    command += ["--rescale", str(spec["dataset"]["rescale"])]
    url = f"http://{HOST}:{port}/v1/models/{KSERVE_MODEL}"
    with serving(command, env, workdir / "kserve.log", url):
        yield port


WARMUP_SECONDS = 3.0


def small_requests(
    model_id: str, service_port: int, reference_port: int, peer: int | str, duration: float
) -> list[tuple[str, str, str, str]]:
    import keras

    (_, _), (x_test, _) = keras.datasets.fashion_mnist.load_data()
    instances = x_test[:1].tolist()  # one image, 0–255
    service = http_request("/predict", json.dumps({"model_id": model_id, "instances": instances}).encode())
    plain = json.dumps({"instances": instances}).encode()
    # (port, path, what it is, target ratio by concurrency)
    baselines: list[tuple[int, str, str, dict[int, float]]] = [
        (reference_port, "/ceiling", "bare Starlette orjson route (the ceiling)", {1: 0.6, 16: 0.8}),
        (reference_port, "/empty", "empty FastAPI json.loads route", {}),
    ]
    if isinstance(peer, int):
        path = f"/v1/models/{KSERVE_MODEL}:predict"
        baselines.append((peer, path, "KServe model server, tf.function", {1: 5, 16: 5}))
    baselines.append((reference_port, "/naive", "naive model.predict route", {}))
    rows = []
    if isinstance(peer, str):
        rows.append(("/predict against KServe's model server", "", "not run", peer))
    for concurrency in (1, 16):
        print(f"small requests at concurrency {concurrency} …", flush=True)
        # All take turns in half-second slices, so other load on the machine weighs on each alike.
        targets = [Target(service_port, service)] + [
            Target(port, http_request(path, plain)) for port, path, _, _ in baselines
        ]
        # Warmed up for some seconds first: the service decides each padded batch size's runtime on its first use
        # (XLA compiles it in the background), a one-time cost of a new model, not of a request.
        slices = max(1, round(duration * 2))
        ours, *theirs = throughputs(HOST, targets, concurrency, warmup=WARMUP_SECONDS, slices=slices)
        print(
            f"  /predict {ours:.0f}/s, "
            + ", ".join(f"{path} {rate:.0f}/s" for (_, path, _, _), rate in zip(baselines, theirs, strict=True)),
            flush=True,
        )
        for (_, _, name, targets_by_concurrency), rate in zip(baselines, theirs, strict=True):
            ratio = ours / rate
            goal = targets_by_concurrency.get(concurrency)
            rows.append(
                (
                    f"/predict, 1 instance, concurrency {concurrency}",
                    f"{ours:.0f} req/s",
                    f"{name}: {rate:.0f} req/s",
                    f"{ratio:.2f}× the throughput" + (f" (target ≥ {goal}×)" if goal else "")
                    if ratio < 10
                    else f"{ratio:.0f}× the throughput",
                )
            )
    rows.append(("/predict's model calls, by runtime", runtimes(service_port, model_id), "", ""))
    return rows


def runtimes(service_port: int, model_id: str) -> str:
    """Which runtime answered the model's calls so far, from the service's /metrics."""
    calls = []
    for line in httpx.get(f"http://{HOST}:{service_port}/metrics").text.splitlines():
        if line.startswith("trainserve_model_calls_total{") and f'model_id="{model_id}"' in line:
            kind = line.partition('call="')[2].partition('"')[0]
            calls.append(f"{kind} {float(line.rpartition(' ')[2]):.0f}")
    return ", ".join(sorted(calls)) or "none"


def large_request(
    model_id: str, model_file: Path, service_port: int, spec: dict[str, Any], repeat: int
) -> list[tuple[str, str, str, str]]:
    """10,000 test images, as the client holds them (uint8 pixels), against the same work in this process:
    scale them and ``predict_on_batch``."""
    import keras

    (_, _), (x_test, _) = keras.datasets.fashion_mnist.load_data()
    pixels = x_test[:10_000]
    rescale = np.float32(spec["dataset"]["rescale"])
    model = keras.models.load_model(model_file, compile=False)
    expected = model.predict_on_batch(pixels * rescale)

    print("one 10,000-instance request …", flush=True)
    npy_answer = ("application/x-npy", "application/x-npy")
    requests = {
        "float32 .npy": http_request(f"/predict?model_id={model_id}", npy(pixels.astype(np.float32)), *npy_answer),
        "uint8 .npy": http_request(f"/predict?model_id={model_id}", npy(pixels), *npy_answer),
        "JSON": http_request("/predict", json.dumps({"model_id": model_id, "instances": pixels.tolist()}).encode()),
    }
    for kind, request in requests.items():  # the first of each warms up, and its answer is checked
        _, body = timed(HOST, service_port, request, 1)
        answer = json.loads(body)["predictions"] if kind == "JSON" else np.load(io.BytesIO(body))
        assert np.allclose(answer, expected, atol=1e-4), kind
    # In turns, so that whatever else the machine does weighs on each side alike; the median of each counts.
    in_process: list[float] = []
    times: dict[str, list[float]] = {kind: [] for kind in requests}
    for _ in range(repeat):
        start = time.perf_counter()
        model.predict_on_batch(pixels * rescale)
        in_process.append(time.perf_counter() - start)
        for kind, request in requests.items():
            times[kind] += timed(HOST, service_port, request, 1)[0]
    baseline = statistics.median(in_process)
    seconds = {kind: statistics.median(values) for kind, values in times.items()}
    for kind in requests:
        print(f"  {kind}: {seconds[kind] * 1000:.0f} ms", flush=True)
    print(f"  in-process scale + predict_on_batch: {baseline * 1000:.0f} ms", flush=True)
    baseline_text = f"in-process scale + predict_on_batch: {baseline * 1000:.0f} ms"
    return [
        (
            f"/predict, 10,000 instances as {kind}" + (" (answer .npy)" if "npy" in kind else ""),
            f"{seconds[kind] * 1000:.0f} ms",
            baseline_text,
            f"{seconds[kind] / baseline:.2f}× the time" + (" (target ≤ 1.3×)" if "npy" in kind else ""),
        )
        for kind in requests
    ]


def experiment(base: str, env: dict[str, str], workdir: Path) -> list[tuple[str, str, str, str]]:
    """The six-optimizer experiment through the service, POST /experiments until it has ended, against each of its
    trials' scripts run as a learner runs them: one ``python script.py`` after another."""
    import subprocess

    from service.examples import chapter_examples, experiment_examples

    body = experiment_examples()["experiment_optimizers"]
    body["name"] = "bench: six optimizers"
    body["base"] = {k: v for k, v in chapter_examples()["fashion_mnist_relu_adam"].items() if k != "name"}
    client = Client(base)
    print("the six-optimizer experiment through the service …", flush=True)
    start = time.perf_counter()
    followed = client.experiments.create(body)
    while followed.status == "running":
        time.sleep(0.2)
    done = followed.record
    service = time.perf_counter() - start
    if done["status"] != "succeeded":
        raise RuntimeError(f"the benchmark's experiment ended {done['status']}: {done['error']}")
    print(f"  {service:.1f} s; its six scripts, one after another …", flush=True)
    scripts = workdir / "scripts"
    scripts.mkdir()
    plain = 0.0
    for trial in followed.trials:
        path = scripts / f"trial_{trial['number']}.py"
        path.write_text(client.job(trial["job_id"]).script())
        start = time.perf_counter()
        subprocess.run([sys.executable, str(path)], cwd=scripts, env=env, check=True, capture_output=True)
        plain += time.perf_counter() - start
    print(f"  {plain:.1f} s", flush=True)
    return [
        (
            "the chapter's six optimizers, POST /experiments → succeeded",
            f"{service:.1f} s",
            f"six learner's scripts one after another: {plain:.1f} s",
            f"{service / plain:.2f}× the time (target ≤ 0.6×)",
        )
    ]


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("measured", "this service", "baseline", "ratio")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
