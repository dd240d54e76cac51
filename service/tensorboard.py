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

import re
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from service.db import is_id
from service.exports import tar_stream

TENSORBOARD = "tensorboard"
RUNS = ("train", "validation")
# One attempt's event files: the epochs it carried over from an earlier attempt (part 0), then its own (part 1).
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.([0-9]{10})\.trainserve\.a([0-9]{1,6})\.([01])")


def logs_root(store: Path) -> Path:
    return store / TENSORBOARD


def job_dir(store: Path, job_id: str) -> Path:
    if not is_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return logs_root(store) / job_id


def event_file_name(started: int, attempt: int, part: int) -> str:
    return f"events.out.tfevents.{started:010d}.trainserve.a{attempt}.{part}"


def attempt_of(name: str) -> int | None:
    """The attempt an event file is of; None for any other file."""
    match = _EVENT_FILE.fullmatch(name)
    return None if match is None else int(match[2])


def event_files(store: Path, job_id: str) -> dict[str, list[Path]]:
    """The job's event files per run (``train``, ``validation``), in the order TensorBoard reads them."""
    found: dict[str, list[Path]] = {}
    for run in RUNS:
        try:
            paths = sorted(p for p in (job_dir(store, job_id) / run).iterdir() if attempt_of(p.name) is not None)
        except FileNotFoundError:
            continue
        if paths:
            found[run] = paths
    return found


def served_files(store: Path, job_id: str, attempts: int) -> dict[str, list[Path]]:
    """The files that are the job's logs: those of its latest attempt that has written any (an attempt that took
    the job over removes the others once it has copied what it resumes from)."""
    files = event_files(store, job_id)
    written = {attempt_of(p.name) or 0 for paths in files.values() for p in paths}
    latest = max((a for a in written if a <= attempts), default=None)
    if latest is None:
        return {}
    chosen = {run: [p for p in paths if attempt_of(p.name) == latest] for run, paths in files.items()}
    return {run: paths for run, paths in chosen.items() if paths}


def archive(files: dict[str, list[Path]], job_id: str) -> Iterator[bytes]:
    """``files`` as a tar, ``<job_id>/<run>/<file>``, read in pieces. A file still being written goes in as long
    as it was when its turn came (TensorBoard reads a last record cut short as not yet written)."""

    def members() -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
        for name in (job_id, *(f"{job_id}/{run}" for run in files)):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            yield entry, None
        for run, paths in files.items():
            for path in paths:
                try:
                    source = path.open("rb")
                except FileNotFoundError:  # removed meanwhile by an attempt that took the job over
                    continue
                with source:
                    stat = source.seek(0, 2)
                    source.seek(0)
                    entry = tarfile.TarInfo(f"{job_id}/{run}/{path.name}")
                    entry.size, entry.mode, entry.mtime = stat, 0o644, int(path.stat().st_mtime)
                    yield entry, source

    return tar_stream(members(), gzip=False)


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
