"""A server started as its own process for as long as a benchmark or a test needs it."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.embedded import stop_process


@contextmanager
def serving(
    command: list[str], env: dict[str, str], log: Path, ready_url: str, timeout: float = 120
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in its own process group, its output in ``log``, until ``ready_url`` answers 200; on exit
    stop the whole group (SIGTERM, then SIGKILL after a minute)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield proc
    finally:
        stop_process(proc, grace=60)


def baseline_arguments() -> argparse.Namespace:
    """The command line of a baseline server, ``--port P --model FILE --rescale R``; TensorFlow's logs kept quiet."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rescale", type=float, required=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return parser.parse_args()
