"""The `trainserve` command."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from service.logs import configure_logging
from service.settings import get_settings
from service.terminal import (
    EXIT_CODES,
    EXIT_REFUSED,
    experiments_table,
    jobs_table,
    models_table,
    predictions_table,
    read_spec,
    watch,
    watch_experiment,
)
from trainserve import Client, TrainServeError
from trainserve.client import DEFAULT_URL

app = typer.Typer(
    help="TrainServe: train Keras models from a JSON spec over REST, then predict and summarise.",
    no_args_is_help=True,
    add_completion=False,
)

Host = Annotated[str, typer.Option(help="Address the API listens on.")]
Port = Annotated[int, typer.Option(help="Port the API listens on.")]


def _logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@app.command()
def serve(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Run everything on this machine: a private Redis (unless TRAINSERVE_REDIS_URL is set), a worker, the API."""
    from service.embedded import serve as run

    _logging()
    run(get_settings(), host, port)


@app.command()
def api(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Run only the API; jobs go to the Redis at TRAINSERVE_REDIS_URL."""
    import uvicorn

    from service.api.app import create_app, server_options

    _logging()
    settings = get_settings()
    if not settings.redis_url:
        raise typer.BadParameter("set TRAINSERVE_REDIS_URL (or use `trainserve serve`)")
    uvicorn.run(create_app(settings), host=host, port=port, **server_options(settings))


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Training processes (default from settings).")] = None,
    pool: Annotated[
        list[str] | None,
        typer.Option(
            "--pool",
            help="A pool whose jobs this worker takes (repeat for several); default TRAINSERVE_WORKER_POOLS, "
            "or `gpu` with --accelerator gpu.",
        ),
    ] = None,
    accelerator: Annotated[
        str | None,
        typer.Option(help="`gpu`: GPU memory grows as needed and each training process runs one job."),
    ] = None,
) -> None:
    """Run a Celery worker that trains jobs from TRAINSERVE_REDIS_URL; start as many as wanted, anywhere."""
    # The options become the settings every process of the worker reads (its pool children too).
    if accelerator is not None:
        os.environ["TRAINSERVE_WORKER_ACCELERATOR"] = accelerator
        if not pool and accelerator == "gpu" and "TRAINSERVE_WORKER_POOLS" not in os.environ:
            pool = ["gpu"]
    if pool:
        os.environ["TRAINSERVE_WORKER_POOLS"] = ",".join(pool)
    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not settings.redis_url:
        raise typer.BadParameter("set TRAINSERVE_REDIS_URL (or use `trainserve serve`)")
    from service.queue import advance_queue, queue_name
    from worker.celery_app import app as celery

    queues = [queue_name(settings, name) for name in settings.pools] + [advance_queue(settings)]
    one_job_each = ["--max-tasks-per-child=1"] if settings.worker_accelerator == "gpu" else []
    celery.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level.upper()}",
            f"--queues={','.join(queues)}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            "--pool=prefork",
            f"--hostname=trainserve-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            *one_job_each,
        ]
    )


@app.command("worker-ready")
def worker_ready() -> None:
    """Exit 0 if a worker on this host is announcing the pools it takes jobs from (a container health check),
    1 if not."""
    import socket

    from service.queue import JobQueue

    settings = get_settings()
    queue = JobQueue(settings)
    try:
        workers = {name for names in queue.live_workers(settings.pools).values() for name in names}
    except Exception as exc:
        print(f"the broker cannot tell: {exc}")
        raise typer.Exit(1) from None
    finally:
        queue.close()
    here = [name for name in workers if name.endswith(f"@{socket.gethostname()}")]
    if not here:
        print(f"no worker on {socket.gethostname()} announces the pools {', '.join(settings.pools)}")
        raise typer.Exit(1)
    print(f"ready: {', '.join(sorted(here))}")


db = typer.Typer(help="The database's schema: its migrations (the API and workers apply pending ones at start).")
app.add_typer(db, name="db")


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations the database (TRAINSERVE_DATABASE_URL) has not had yet, and print its revision."""
    from service.db import get_engine, migrate

    _logging()
    print(f"database at revision {migrate(get_engine(get_settings().database_url))}")


Url = Annotated[str, typer.Option("--url", envvar="TRAINSERVE_URL", help="The running service.", show_default=True)]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="TRAINSERVE_API_KEY", help="Sent as Authorization: Bearer.")
]
# What a shell reports for a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def _client(url: str, api_key: str | None) -> Client:
    return Client(url=url, api_key=api_key)


def _run(action: Callable[[], int | None]) -> None:
    """Print a refused request as the API explains it, and exit 2."""
    try:
        code = action()
    except TrainServeError as exc:
        Console(stderr=True).print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)  # a problem a line
        raise typer.Exit(EXIT_REFUSED) from exc
    raise typer.Exit(code or 0)


@app.command("train")
def train_command(
    spec: Annotated[Path, typer.Argument(help="A training request as JSON, e.g. examples/digits_relu_adam.json.")],
    watch_job: Annotated[
        bool, typer.Option("--watch", help="Follow the job; exit 0 succeeded, 1 failed, 3 cancelled.")
    ] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Queue a training job (and follow it with --watch)."""
    console = Console()

    def action() -> int:
        job = _client(url, api_key).train(read_spec(spec))
        assert job.created is not None
        build = job.created["build"]
        params = f" ({build['total_params']:,} parameters)" if build is not None else ""
        console.print(f"job {job.id} {job.created['status']}{params}")
        if not watch_job:
            return 0
        return EXIT_CODES.get(watch(job, console), 1)

    _run(action)


@app.command("jobs")
def jobs_command(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """List jobs, newest first."""
    _run(lambda: Console().print(jobs_table(_client(url, api_key).jobs(status=status, limit=limit))))


@app.command("experiment")
def experiment_command(
    spec: Annotated[Path, typer.Argument(help="An experiment as JSON, e.g. examples/experiment_activation.json.")],
    watching: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Follow it on a live leaderboard (a line per trial change when not a terminal); exit 0 "
            "succeeded, 1 failed, 3 cancelled. Ctrl-C stops watching, not the experiment.",
        ),
    ] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Start an experiment: a search over a training request's fields, its trials queued as jobs."""
    console = Console()

    def action() -> int:
        experiment = _client(url, api_key).experiments.create(read_spec(spec))
        created = experiment.created
        assert created is not None
        experiment_id = experiment.id
        checked = (
            f"{created['checked']} dry-built at submit" if created["checked"] else "each checked before it is queued"
        )
        console.print(
            f"experiment {experiment_id} {created['status']}: {created['trials']} trials ({checked})", soft_wrap=True
        )
        if not watching:
            return 0
        try:
            ended = watch_experiment(experiment, console)
        except KeyboardInterrupt:
            console.print(
                f"stopped watching; experiment {experiment_id} goes on "
                f"(`trainserve experiment-cancel {experiment_id}` stops it)",
                markup=False,
                highlight=False,
            )
            return EXIT_INTERRUPTED
        return EXIT_CODES.get(ended["status"], 1)

    _run(action)


@app.command("experiments")
def experiments_command(
    status: Annotated[str | None, typer.Option(help="Only experiments in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """List experiments, newest first, with their trials' states and best trial."""
    _run(lambda: Console().print(experiments_table(_client(url, api_key).experiments.list(status=status, limit=limit))))


@app.command("experiment-cancel")
def experiment_cancel_command(
    experiment_id: Annotated[str, typer.Argument(help="An experiment id.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Cancel an experiment: no more trials, queued ones cancelled, running ones stopped at their next batch."""

    def action() -> None:
        status = _client(url, api_key).experiments.cancel(experiment_id).record["status"]
        waiting = " (cancel requested: running trials stop at their next batch)" if status == "running" else ""
        Console(highlight=False).print(f"experiment {experiment_id} {status}{waiting}", markup=False)

    _run(action)


@app.command("models")
def models_command(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """List trained models, newest first."""
    _run(lambda: Console().print(models_table(_client(url, api_key).models(limit=limit))))


@app.command("summary")
def summary_command(
    model_id: Annotated[str, typer.Argument(help="A model id.")], url: Url = DEFAULT_URL, api_key: ApiKey = None
) -> None:
    """Print a model's summary, as Keras' model.summary() does."""

    def action() -> None:
        text = _client(url, api_key).model(model_id).summary_text
        Console(highlight=False).print(text, end="", markup=False)

    _run(action)


@app.command("predict")
def predict_command(
    model_id: Annotated[str, typer.Argument(help="A model id.")],
    instances: Annotated[Path, typer.Argument(help="A .npy file: a batch of inputs in the dataset's units.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Predict the classes of a batch of inputs stored as .npy."""

    def action() -> None:
        try:
            body = instances.read_bytes()
        except OSError as exc:
            raise TrainServeError(f"cannot read {instances}: {exc}") from exc
        model = _client(url, api_key).model(model_id)
        Console().print(predictions_table(model.id, model.classify(body)))

    _run(action)


@app.command("tensorboard")
def tensorboard_command(
    host: Annotated[str, typer.Option(help="Address TensorBoard listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port TensorBoard listens on.")] = 6006,
) -> None:
    """Run TensorBoard over every job's logs in this machine's model store (TRAINSERVE_HOME, TRAINSERVE_MODEL_STORE):
    a run per job and split, <job id>/train and <job id>/validation. Needs TensorBoard (the `tensorboard` extra)."""
    from service import tensorboard

    if not tensorboard.installed():
        Console(stderr=True).print(f"[red]{escape(tensorboard.INSTALL_HINT)}[/red]", soft_wrap=True)
        raise typer.Exit(EXIT_REFUSED)
    import subprocess
    import threading

    from service.store import model_store

    settings = get_settings()
    store = model_store(settings)
    logdir = store.local_directory(tensorboard.TENSORBOARD)
    if logdir is not None:
        logdir.mkdir(parents=True, exist_ok=True)
        command = tensorboard.command_line(logdir, host, port)
        print(f"TensorBoard over {logdir}: http://{host}:{port}/", flush=True)
        os.execv(command[0], command)
    # An object store: TensorBoard reads a local copy of the logs, brought up to date every few seconds.
    logdir = settings.home / "tensorboard"
    stop = threading.Event()
    copier = threading.Thread(target=tensorboard.follow, args=(store, logdir, 10.0, stop), daemon=True)
    logdir.mkdir(parents=True, exist_ok=True)
    tensorboard.copy_logs(store, logdir)
    copier.start()
    command = tensorboard.command_line(logdir, host, port)
    print(f"TensorBoard over {store.location}, copied into {logdir} every 10 s: http://{host}:{port}/", flush=True)
    try:
        raise typer.Exit(subprocess.call(command))
    finally:
        stop.set()


def main() -> None:
    try:
        app()
    except ValidationError as exc:  # a setting that cannot be used: say which, and do not start
        for error in exc.errors():
            name = "TRAINSERVE_" + "_".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            Console(stderr=True).print(f"[red]{escape(name)}[/red]: {escape(message)}", highlight=False)
        raise SystemExit(EXIT_REFUSED) from None


if __name__ == "__main__":
    main()
