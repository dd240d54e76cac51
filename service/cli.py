"""The `trainserve` command."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from service.settings import get_settings

app = typer.Typer(
    help="TrainServe: train Keras models from a JSON spec over REST, then predict and summarise.",
    no_args_is_help=True,
    add_completion=False,
)

Host = Annotated[str, typer.Option(help="Address the API listens on.")]
Port = Annotated[int, typer.Option(help="Port the API listens on.")]


def _logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    logging.basicConfig(
        level=get_settings().log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


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

    from service.api.app import create_app

    _logging()
    settings = get_settings()
    if not settings.redis_url:
        raise typer.BadParameter("set TRAINSERVE_REDIS_URL (or use `trainserve serve`)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Training processes (default from settings).")] = None,
) -> None:
    """Run a Celery worker that trains jobs from TRAINSERVE_REDIS_URL; start as many as wanted, anywhere."""
    from worker.celery_app import app as celery

    settings = get_settings()
    if not settings.redis_url:
        raise typer.BadParameter("set TRAINSERVE_REDIS_URL (or use `trainserve serve`)")
    celery.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level.upper()}",
            f"--queues={settings.queue}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            "--pool=prefork",
            f"--hostname=trainserve-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
