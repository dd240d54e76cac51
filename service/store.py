"""The model store: per trained model a ``<model_id>.keras`` file and its LiteRT flatbuffer ``<model_id>.tflite``,
each written atomically and checked by its sha256 when read."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from service.db import is_id


class StoreError(Exception):
    """A stored model file is missing or is not the file this service wrote."""


def model_path(store: Path, model_id: str, suffix: str = ".keras") -> Path:
    if not is_id(model_id):
        raise ValueError(f"not a model id: {model_id!r}")
    return store / f"{model_id}{suffix}"


def litert_path(store: Path, model_id: str) -> Path:
    return model_path(store, model_id, ".tflite")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_path(store: Path, suffix: str = ".keras") -> Path:
    """A fresh path in the store's directory (same filesystem, so the final rename is atomic)."""
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store, prefix=".incoming-", suffix=suffix)
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
    temp = temporary_path(store, final.suffix)
    try:
        temp.write_bytes(content)
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


def verified_path(store: Path, model_id: str, sha256: str) -> Path:
    path = model_path(store, model_id)
    if not path.is_file():
        raise StoreError(f"the file of model {model_id} is missing from the store")
    if sha256_file(path) != sha256:
        raise StoreError(f"the file of model {model_id} does not match the sha256 recorded when it was saved")
    return path
