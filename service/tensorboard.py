"""Each job's TensorBoard logs in the model store: where they are, which files are the job's, and the tar the API
answers with. No TensorFlow here (``worker.tensorboard`` writes them).

``<store>/tensorboard/<job_id>/train/`` and ``.../validation/`` are the two runs Keras' own
``keras.callbacks.TensorBoard`` writes: per epoch ``epoch_<name>`` for the loss, every metric and the learning rate
(validation's without their ``val_``), at step ``epoch - 1`` as Keras counts, and ``<weight path>/histogram`` when
the request asks for histograms. Each attempt at a job writes files of its own, named after it
(``events.out.tfevents.<start>.trainserve.a<attempt>.<part>``): an attempt that resumes a job first copies the
epochs up to its checkpoint from the files of the attempt that wrote the checkpoint, then removes every other
attempt's files, so the job's logs hold each epoch once, never those of an attempt cut off. Logs stay as long as the
job's record does (jobs are kept).
"""

from __future__ import annotations

import io
import re
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from service.db import is_id
from service.exports import tar_stream
from service.store import Store

TENSORBOARD = "tensorboard"
RUNS = ("train", "validation")
# One attempt's event files: the epochs it carried over from an earlier attempt (part 0), then its own (part 1).
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.([0-9]{10})\.trainserve\.a([0-9]{1,6})\.([01])")


def job_prefix(job_id: str) -> str:
    """Where a job's logs are in the model store."""
    if not is_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"{TENSORBOARD}/{job_id}"


def event_file_name(started: int, attempt: int, part: int) -> str:
    return f"events.out.tfevents.{started:010d}.trainserve.a{attempt}.{part}"


def attempt_of(name: str) -> int | None:
    """The attempt an event file is of; None for any other file."""
    match = _EVENT_FILE.fullmatch(name)
    return None if match is None else int(match[2])


def event_files(store: Store, job_id: str) -> dict[str, list[str]]:
    """The names of the job's event files per run (``train``, ``validation``), in the order TensorBoard reads
    them."""
    found: dict[str, list[str]] = {}
    for run in RUNS:
        names = sorted(name for name in store.names(f"{job_prefix(job_id)}/{run}") if attempt_of(name) is not None)
        if names:
            found[run] = names
    return found


def served_files(store: Store, job_id: str, attempts: int) -> dict[str, list[str]]:
    """The files that are the job's logs: those of its latest attempt that has written any (an attempt that took
    the job over removes the others once it has copied what it resumes from)."""
    files = event_files(store, job_id)
    written = {attempt_of(name) or 0 for names in files.values() for name in names}
    latest = max((a for a in written if a <= attempts), default=None)
    if latest is None:
        return {}
    chosen = {run: [name for name in names if attempt_of(name) == latest] for run, names in files.items()}
    return {run: names for run, names in chosen.items() if names}


def archive(store: Store, files: dict[str, list[str]], job_id: str) -> Iterator[bytes]:
    """``files`` as a tar, ``<job_id>/<run>/<file>``, each read as it was when its turn came (TensorBoard reads a
    last record cut short as not yet written). Event files hold a few numbers per epoch: each is read whole."""

    def members() -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
        for name in (job_id, *(f"{job_id}/{run}" for run in files)):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            yield entry, None
        for run, names in files.items():
            for name in names:
                try:
                    content = store.unchecked(f"{job_prefix(job_id)}/{run}/{name}")
                except FileNotFoundError:  # removed meanwhile by an attempt that took the job over
                    continue
                entry = tarfile.TarInfo(f"{job_id}/{run}/{name}")
                entry.size, entry.mode, entry.mtime = len(content), 0o644, int(time.time())
                yield entry, io.BytesIO(content)

    return tar_stream(members(), gzip=False)


def copy_logs(store: Store, target: Path) -> int:
    """Copy every job's logs from an object store into ``target`` (what TensorBoard reads), the files whose size
    changed; returns how many were copied."""
    copied = 0
    for job_id in store.directories(TENSORBOARD):
        for run in RUNS:
            prefix = f"{TENSORBOARD}/{job_id}/{run}"
            here = target / job_id / run
            for name in store.names(prefix):
                if attempt_of(name) is None:
                    continue
                path = here / name
                if path.is_file() and path.stat().st_size == store.size(f"{prefix}/{name}"):
                    continue
                here.mkdir(parents=True, exist_ok=True)
                temp = here / f".{name}.part"
                temp.write_bytes(store.unchecked(f"{prefix}/{name}"))
                temp.replace(path)
                copied += 1
    return copied


def follow(store: Store, target: Path, interval: float, stop: threading.Event) -> None:
    """Copy the logs now, then every ``interval`` seconds until ``stop`` is set."""
    while True:
        copy_logs(store, target)
        if stop.wait(interval):
            return


INSTALL_HINT = (
    "TensorBoard is not installed in this environment: pip install 'trainserve[tensorboard]' "
    "(or pip install tensorboard)"
)


def installed() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def command_line(logdir: Path, host: str, port: int) -> list[str]:
    """TensorBoard over ``logdir``: each job's runs as ``<job id>/train`` and ``<job id>/validation``."""
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host, "--port", str(port)]
