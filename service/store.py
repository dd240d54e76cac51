"""The model store: per trained model a ``<model_id>.keras`` file, its LiteRT flatbuffer ``<model_id>.tflite`` and
its exports (``<model_id>.savedmodel.tar``, ``<model_id>.weights.h5``), each written atomically and checked by its
sha256 when read; in its ``checkpoints`` directory, the training state a running job would resume from
(``<job_id>-<attempt>-<epoch>.npz``), there only while the job runs; and in ``tensorboard``, each job's TensorBoard
event files (``service.tensorboard``), kept as long as the job's record."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from service.db import ID_PATTERN, is_id


class StoreError(Exception):
    """A stored model file is missing or is not the file this service wrote."""


def model_path(store: Path, model_id: str, suffix: str = ".keras") -> Path:
    if not is_id(model_id):
        raise ValueError(f"not a model id: {model_id!r}")
    return store / f"{model_id}{suffix}"


def litert_path(store: Path, model_id: str) -> Path:
    return model_path(store, model_id, ".tflite")


# The files a model's exports are stored in, beside its .keras file.
EXPORT_SUFFIXES = {"savedmodel": ".savedmodel.tar", "weights": ".weights.h5"}


def export_path(store: Path, model_id: str, export: str) -> Path:
    return model_path(store, model_id, EXPORT_SUFFIXES[export])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


TEMPORARY_PREFIX = ".incoming-"


def temporary_path(store: Path, suffix: str = ".keras", prefix: str = TEMPORARY_PREFIX) -> Path:
    """A fresh path in the store's directory (same filesystem, so the final rename is atomic)."""
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store, prefix=prefix, suffix=suffix)
    os.close(fd)
    return Path(name)


def publish(temp: Path, final: Path) -> str:
    """Move a fully written file into place; returns its sha256."""
    digest = sha256_file(temp)
    with temp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, final)
    return digest


def write(store: Path, final: Path, content: bytes) -> str:
    """Write ``content`` to ``final`` atomically (a temporary file, synced, renamed); returns its sha256."""
    return write_with(store, final, lambda f: f.write(content))


def write_with(store: Path, final: Path, writer: Callable[[BinaryIO], object], prefix: str = TEMPORARY_PREFIX) -> str:
    """Write ``final`` atomically with what ``writer`` writes into an open file; returns its sha256."""
    temp = temporary_path(store, final.suffix, prefix)
    try:
        with temp.open("wb") as f:
            writer(f)
        return publish(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def verified_bytes(path: Path, sha256: str, what: str) -> bytes:
    """The file's content, if it is the one whose sha256 was recorded (read once: what is checked is what is used)."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"the {what} is missing from the store") from None
    if hashlib.sha256(content).hexdigest() != sha256:
        raise StoreError(f"the {what} does not match the sha256 recorded when it was saved")
    return content


def verified_path(store: Path, model_id: str, sha256: str, suffix: str = ".keras", what: str = "file") -> Path:
    """The path of one of a model's files, once the file there is found to be the one whose sha256 was recorded."""
    path = model_path(store, model_id, suffix)
    if not path.is_file():
        raise StoreError(f"the {what} of model {model_id} is missing from the store")
    if sha256_file(path) != sha256:
        raise StoreError(f"the {what} of model {model_id} does not match the sha256 recorded when it was saved")
    return path


CHECKPOINTS = "checkpoints"
_ID = ID_PATTERN.removeprefix("^").removesuffix("$")
_CHECKPOINT = re.compile(rf"({_ID})-([0-9]+)-([0-9]+)\.npz")
# A checkpoint's temporary file is named after it: one a dead process left is known to be its job's too.
_CHECKPOINT_TEMPORARY = re.compile(rf"{re.escape(TEMPORARY_PREFIX)}({_ID})-([0-9]+)-([0-9]+)-[^/]*\.npz")


def checkpoint_dir(store: Path) -> Path:
    return store / CHECKPOINTS


def checkpoint_name(job_id: str, attempt: int, epoch: int) -> str:
    """One file per job, attempt and epoch: two attempts never write the same file, and an epoch's checkpoint
    never replaces the one the job's record still names."""
    if not is_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"{job_id}-{attempt}-{epoch}.npz"


def checkpoint_owner(name: str) -> tuple[str, int] | None:
    """The job and attempt a checkpoint file (or its temporary file) is of; None for any other name."""
    match = _CHECKPOINT.fullmatch(name) or _CHECKPOINT_TEMPORARY.fullmatch(name)
    return None if match is None else (match[1], int(match[2]))


def checkpoint_path(store: Path, name: str) -> Path:
    """Where a checkpoint recorded as ``name`` is; the name comes from the database, so it is checked to name a
    file in the checkpoints directory and nothing else."""
    if _CHECKPOINT.fullmatch(name) is None:
        raise ValueError(f"not a checkpoint file name: {name!r}")
    return checkpoint_dir(store) / name


def write_checkpoint(store: Path, name: str, writer: Callable[[BinaryIO], object]) -> tuple[str, int]:
    """Write a checkpoint atomically; returns its sha256 and size."""
    final = checkpoint_path(store, name)
    prefix = f"{TEMPORARY_PREFIX}{final.stem}-"
    try:
        sha256 = write_with(final.parent, final, writer, prefix)
    except FileNotFoundError:
        # The directory went between being made and used, emptied by another process's last removal.
        sha256 = write_with(final.parent, final, writer, prefix)
    return sha256, final.stat().st_size


def remove_checkpoint(store: Path, name: str) -> None:
    """Remove a checkpoint file (or its temporary file), and the checkpoints directory once it is empty: a store
    with no job running holds models only."""
    if checkpoint_owner(name) is None:
        raise ValueError(f"not a checkpoint file name: {name!r}")
    path = checkpoint_dir(store) / name
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or gone already
        path.parent.rmdir()


def checkpoint_files(store: Path) -> dict[str, tuple[str, int]]:
    """The checkpoint files in the store (their temporary files too), each with its job and attempt."""
    try:
        names = [p.name for p in checkpoint_dir(store).iterdir()]
    except FileNotFoundError:
        return {}
    return {name: owner for name in names if (owner := checkpoint_owner(name)) is not None}
