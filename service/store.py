"""The stores: where model files and datasets live, a local directory or an object store (``s3://bucket/prefix``
and whatever else fsspec reaches).

The model store holds per trained model a ``<model_id>.keras`` file, its LiteRT flatbuffer ``<model_id>.tflite`` and
its exports (``<model_id>.savedmodel.tar``, ``<model_id>.weights.h5``); under ``checkpoints/``, the training state
a running job would resume from (``<job_id>-<attempt>-<epoch>.npz``), there only while the job runs; and under
``tensorboard/``, each job's TensorBoard event files (``service.tensorboard``), kept as long as the job's record.
The dataset store holds one normalised ``.npz`` per uploaded dataset. The same rules hold in either kind of store
(the TensorBoard logs aside, which are diagnostics, recorded nowhere):

- A file is written under a temporary name and moved to its own only once it is whole (a rename in a directory; a
  copy within the object store, then the temporary object removed), and recorded in the database after that: no
  reader ever picks up half a file.
- Its sha256 is taken as it is written, recorded, and checked whenever it is read: what is checked is what is used.
- Reading from an object store goes through a local cache keyed by sha256 (``<home>/cache``, bounded by
  ``TRAINSERVE_STORE_CACHE_BYTES``, least recently used out first): a model loads from local disk, and is fetched
  once per host however many times it is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from service.db import ID_PATTERN, is_id
from service.settings import Settings, is_url

log = logging.getLogger(__name__)


class StoreError(Exception):
    """A stored file is missing, or is not the file this service wrote (its sha256 differs)."""


TEMPORARY_PREFIX = ".incoming-"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_name(key: str) -> str:
    """A fresh name beside ``key`` for it while it is being written; named after it, so that one a dead process
    left can be told whose it was (see ``checkpoint_owner``)."""
    directory, _, name = key.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, f".{suffix}") if dot else (name, "")
    temp = f"{TEMPORARY_PREFIX}{stem}-{uuid.uuid4().hex[:12]}{suffix}"
    return f"{directory}/{temp}" if directory else temp


class Store(ABC):
    """Files by key (``"<id>.keras"``, ``"checkpoints/<name>.npz"``), each written whole and read verified."""

    location: str

    @abstractmethod
    def put_file(self, key: str, source: Path) -> str:
        """Store a whole local file under ``key`` (the source is moved if it can be, else copied); its sha256."""

    @abstractmethod
    def put_with(self, key: str, writer: Callable[[BinaryIO], object]) -> tuple[str, int]:
        """Store what ``writer`` writes into an open file under ``key``; its sha256 and size."""

    def put_bytes(self, key: str, content: bytes) -> str:
        return self.put_with(key, lambda f: f.write(content))[0]

    @abstractmethod
    def local(self, key: str, sha256: str, what: str, *, verify: bool = True) -> Path:
        """A local file with the content of ``key``, if it is the one whose sha256 was recorded (StoreError
        otherwise). Read it before the store might drop it from its cache: open it, or load it, at once.
        ``verify=False`` spares hashing a local file whole to read a few bytes of it (a dataset's first rows); a
        copy fetched from an object store is always checked as it arrives."""

    def read(self, key: str, sha256: str, what: str) -> bytes:
        """The content of ``key``, if it is the one whose sha256 was recorded (read once: what is checked is what
        is used)."""
        try:
            content = self.unchecked(key)
        except FileNotFoundError:
            raise StoreError(f"the {what} is missing from the store") from None
        if hashlib.sha256(content).hexdigest() != sha256:
            raise StoreError(f"the {what} does not match the sha256 recorded when it was saved")
        return content

    @abstractmethod
    def unchecked(self, key: str) -> bytes:
        """The content of ``key`` as it is (FileNotFoundError if there is none): for files no record names the
        sha256 of, such as TensorBoard's logs."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; nothing if it is not there."""

    @abstractmethod
    def names(self, directory: str) -> list[str]:
        """The names of the files in ``directory`` (``""``: the top), not of those deeper."""

    @abstractmethod
    def directories(self, directory: str) -> list[str]:
        """The names of the directories in ``directory``."""

    def local_directory(self, directory: str) -> Path | None:
        """A local directory whose files are the store's own under ``directory``, as they are written (a file
        appended to there is in the store as it grows); None for an object store."""
        return None

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def copy(self, source: str, key: str) -> None:
        """Store the file of ``source`` again under ``key`` (FileNotFoundError if there is none)."""


class LocalStore(Store):
    """A directory shared by the API and every worker (on one host, or a shared file system)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def _temporary(self, key: str) -> Path:
        path = self.path(temporary_name(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def put_file(self, key: str, source: Path) -> str:
        return self.put_with(key, lambda f: _copy_into(source, f))[0]

    def put_with(self, key: str, writer: Callable[[BinaryIO], object]) -> tuple[str, int]:
        try:
            return self._put_with(key, writer)
        except FileNotFoundError:
            # The directory went between being made and used, emptied by another process's last removal.
            return self._put_with(key, writer)

    def _put_with(self, key: str, writer: Callable[[BinaryIO], object]) -> tuple[str, int]:
        temp = self._temporary(key)
        try:
            with temp.open("wb") as f:
                writer(f)
            size = temp.stat().st_size
            # Hashed from the file as it is, once whole: a writer may seek back and rewrite (a zip's headers).
            return _publish(temp, self.path(key)), size
        finally:
            temp.unlink(missing_ok=True)

    def local(self, key: str, sha256: str, what: str, *, verify: bool = True) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise StoreError(f"the {what} is missing from the store")
        if verify and sha256_file(path) != sha256:
            raise StoreError(f"the {what} does not match the sha256 recorded when it was saved")
        return path

    def unchecked(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        if path.parent != self.root:
            with contextlib.suppress(OSError):  # not empty, or gone already
                path.parent.rmdir()

    def names(self, directory: str) -> list[str]:
        try:
            return [p.name for p in (self.root / directory).iterdir() if p.is_file()]
        except FileNotFoundError:
            return []

    def directories(self, directory: str) -> list[str]:
        try:
            return [p.name for p in (self.root / directory).iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []

    def local_directory(self, directory: str) -> Path | None:
        return self.root / directory

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def copy(self, source: str, key: str) -> None:
        final = self.path(key)
        try:
            os.link(self.path(source), final)  # the same bytes, each record its own name
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            self.put_with(key, lambda f: _copy_into(self.path(source), f))


def _publish(temp: Path, final: Path) -> str:
    digest = sha256_file(temp)
    with temp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, final)
    return digest


def _copy_into(source: Path, f: BinaryIO) -> None:
    with source.open("rb") as src:
        shutil.copyfileobj(src, f, CHUNK)


class ObjectStore(Store):
    """An object store through fsspec (S3 with s3fs, and the others fsspec knows), with a local read cache."""

    def __init__(self, url: str, cache: Path, cache_bytes: int) -> None:
        import fsspec

        self.location = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.location)
        self.cache = Cache(cache, cache_bytes)

    def _full(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put_file(self, key: str, source: Path) -> str:
        sha256 = sha256_file(source)
        self._upload(key, source)
        return sha256

    def put_with(self, key: str, writer: Callable[[BinaryIO], object]) -> tuple[str, int]:
        with self.cache.scratch() as temp:
            with temp.open("wb") as f:
                writer(f)
            return self.put_file(key, temp), temp.stat().st_size

    def _upload(self, key: str, source: Path) -> None:
        """Upload under a temporary key, then move it to its own: the final key appears whole, at once."""
        temp = self._full(temporary_name(key))
        try:
            self.fs.put_file(str(source), temp)
            self.fs.mv(temp, self._full(key))
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(temp)
        self.fs.invalidate_cache()

    def local(self, key: str, sha256: str, what: str, *, verify: bool = True) -> Path:
        cached = self.cache.get(sha256, key, verify=verify)
        if cached is not None:
            return cached
        with self.cache.scratch() as temp:
            try:
                self.fs.get_file(self._full(key), str(temp))
            except FileNotFoundError:
                raise StoreError(f"the {what} is missing from the store") from None
            if sha256_file(temp) != sha256:
                raise StoreError(f"the {what} does not match the sha256 recorded when it was saved")
            return self.cache.add(sha256, key, temp)

    def unchecked(self, key: str) -> bytes:
        content: bytes = self.fs.cat_file(self._full(key))
        return content

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._full(key))

    def _listing(self, directory: str, kind: str) -> list[str]:
        """The names of the entries of one kind (``file``, ``directory``) in ``directory``."""
        path = self._full(directory) if directory else self.root
        try:
            entries = self.fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry.get("type") == kind]

    def names(self, directory: str) -> list[str]:
        return self._listing(directory, "file")

    def directories(self, directory: str) -> list[str]:
        return self._listing(directory, "directory")

    def size(self, key: str) -> int:
        return int(self.fs.size(self._full(key)))

    def copy(self, source: str, key: str) -> None:
        temp = self._full(temporary_name(key))
        try:
            self.fs.copy(self._full(source), temp)  # within the store (S3: a server-side copy)
            self.fs.mv(temp, self._full(key))
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(temp)
        self.fs.invalidate_cache()


class Cache:
    """Local copies of stored files, by sha256 (a file's content names it, so a copy never goes stale), at most
    ``limit`` bytes: the least recently used go first when one more is added."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self._lock = threading.Lock()

    def _path(self, sha256: str, key: str) -> Path:
        if re.fullmatch(r"[0-9a-f]{64}", sha256) is None:
            raise StoreError(f"not a sha256: {sha256[:80]!r}")
        return self.directory / f"{sha256}{Path(key).suffix}"

    def get(self, sha256: str, key: str, *, verify: bool = True) -> Path | None:
        path = self._path(sha256, key)
        try:
            os.utime(path)  # used now: last to go
        except FileNotFoundError:
            return None
        if verify and sha256_file(path) != sha256:  # the local disk let it rot: fetch it again
            path.unlink(missing_ok=True)
            return None
        return path

    @contextlib.contextmanager
    def scratch(self) -> Any:
        """A temporary file in the cache's directory (removed afterwards unless added)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=TEMPORARY_PREFIX)
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def add(self, sha256: str, key: str, temp: Path) -> Path:
        path = self._path(sha256, key)
        size = temp.stat().st_size
        with self._lock:
            self._make_room(size)
            os.replace(temp, path)
        return path

    def _make_room(self, size: int) -> None:
        entries = []
        for entry in self.directory.iterdir():
            if entry.name.startswith(TEMPORARY_PREFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                entries.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in entries) + size
        for _, entry_size, entry in sorted(entries):
            if total <= self.limit:
                break
            # A file a process has open or loaded stays readable by it after this (POSIX unlink).
            entry.unlink(missing_ok=True)
            total -= entry_size


_stores: dict[tuple[int, str], Store] = {}
_stores_lock = threading.Lock()


def open_store(location: str, *, cache: Path, cache_bytes: int) -> Store:
    """The store a setting names, one per process (fsspec's clients must not cross a fork)."""
    key = (os.getpid(), location)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = ObjectStore(location, cache, cache_bytes) if is_url(location) else LocalStore(Path(location))
            _stores[key] = store
        return store


def model_store(settings: Settings) -> Store:
    """The store of trained models (and running jobs' checkpoints)."""
    return open_store(settings.model_store, cache=settings.store_cache, cache_bytes=settings.store_cache_bytes)


def dataset_store(settings: Settings) -> Store:
    """The store of uploaded datasets."""
    return open_store(settings.dataset_store, cache=settings.store_cache, cache_bytes=settings.store_cache_bytes)


# --- what the model store holds -----------------------------------------------------------------------------------


def model_key(model_id: str, suffix: str = ".keras") -> str:
    if not is_id(model_id):
        raise ValueError(f"not a model id: {model_id!r}")
    return f"{model_id}{suffix}"


def litert_key(model_id: str) -> str:
    return model_key(model_id, ".tflite")


# The files a model's exports are stored in, beside its .keras file.
EXPORT_SUFFIXES = {"savedmodel": ".savedmodel.tar", "weights": ".weights.h5"}


def export_key(model_id: str, export: str) -> str:
    return model_key(model_id, EXPORT_SUFFIXES[export])


CHECKPOINTS = "checkpoints"
_ID = ID_PATTERN.removeprefix("^").removesuffix("$")
_CHECKPOINT = re.compile(rf"({_ID})-([0-9]+)-([0-9]+)\.npz")
# A checkpoint's temporary file is named after it: one a dead process left is known to be its job's too.
_CHECKPOINT_TEMPORARY = re.compile(rf"{re.escape(TEMPORARY_PREFIX)}({_ID})-([0-9]+)-([0-9]+)-[^/]*\.npz")


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


def checkpoint_key(name: str) -> str:
    """Where a checkpoint recorded as ``name`` is; the name comes from the database, so it is checked to name a
    file in the checkpoints directory and nothing else."""
    if _CHECKPOINT.fullmatch(name) is None:
        raise ValueError(f"not a checkpoint file name: {name!r}")
    return f"{CHECKPOINTS}/{name}"


def write_checkpoint(store: Store, name: str, writer: Callable[[BinaryIO], object]) -> tuple[str, int]:
    """Write a checkpoint whole; returns its sha256 and size."""
    return store.put_with(checkpoint_key(name), writer)


def remove_checkpoint(store: Store, name: str) -> None:
    """Remove a checkpoint file (or its temporary file); in a local store, the checkpoints directory too once it is
    empty: a store with no job running holds models only."""
    if checkpoint_owner(name) is None:
        raise ValueError(f"not a checkpoint file name: {name!r}")
    store.delete(f"{CHECKPOINTS}/{name}")


def checkpoint_files(store: Store) -> dict[str, tuple[str, int]]:
    """The checkpoint files in the store (their temporary files too), each with its job and attempt."""
    return {name: owner for name in store.names(CHECKPOINTS) if (owner := checkpoint_owner(name)) is not None}
