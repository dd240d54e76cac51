"""The model store: one ``<model_id>.keras`` file per trained model, written atomically, checked by sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from service.db import is_id


class StoreError(Exception):
    """A stored model file is missing or is not the file this service wrote."""


def model_path(store: Path, model_id: str) -> Path:
    if not is_id(model_id):
        raise ValueError(f"not a model id: {model_id!r}")
    return store / f"{model_id}.keras"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_path(store: Path) -> Path:
    """A fresh path in the store's directory (same filesystem, so the final rename is atomic)."""
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store, prefix=".incoming-", suffix=".keras")
    os.close(fd)
    return Path(name)


def publish(temp: Path, final: Path) -> str:
    """Move a fully written file into place; returns its sha256."""
    digest = sha256_file(temp)
    with temp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, final)
    return digest


def verified_path(store: Path, model_id: str, sha256: str) -> Path:
    path = model_path(store, model_id)
    if not path.is_file():
        raise StoreError(f"the file of model {model_id} is missing from the store")
    if sha256_file(path) != sha256:
        raise StoreError(f"the file of model {model_id} does not match the sha256 recorded when it was saved")
    return path
