"""A published model's exports: what a Keras user takes to TensorFlow Serving, to a phone, or back into Keras.

All are made by the worker when it publishes the model (:func:`write_exports`), from the model it has just trained,
and stored beside its ``.keras`` file with their sha256 (``ModelRow.exports``, ``ModelRow.litert``):

- **SavedModel** (``savedmodel``): exported with Keras' own ``keras.export.ExportArchive`` (what
  ``model.export(path, format="tf_saved_model")`` uses), with one endpoint, ``serving_default``: it takes ``input``,
  float32 ``[batch, *input_shape]`` in the dataset's own units, applies the dataset's ``rescale`` and answers
  ``{"output": float32 [batch, *output_shape]}`` — the signature and the units of this service's TensorFlow Serving
  API (``/v1/models/{name}/metadata``), so a client of one works against the other. Stored as a tar of the
  SavedModel directory; the API streams it as a ``.tar.gz`` in TensorFlow Serving's ``<name>/<version>/`` layout
  (:func:`savedmodel_archive`), the name and version being those of the model's record.
- **LiteRT** (``litert``): the flatbuffer TensorFlow's converter makes of that same SavedModel's
  ``serving_default`` (``service.serving.litert``): the same input, output and units. The API's LiteRT runtime
  serves predictions with it too.
- **Weights** (``weights``): ``model.save_weights``, a ``.weights.h5`` file for ``model.load_weights`` on the same
  architecture; these weights take inputs after the rescale, as the ``.keras`` file's model does.

The SavedModel costs the worker no TensorFlow work of its own: converting a Keras model to a flatbuffer already
exports it as a SavedModel (TensorFlow's converter does it through the same ``ExportArchive``), and this keeps that
export. The API streams files; it never traces or converts a model for an export.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

from service.serving.codecs.tfserving import INPUT_NAME, OUTPUT_NAME, SIGNATURE
from service.store import EXPORT_SUFFIXES, Store, StoreError, export_key, litert_key

log = logging.getLogger(__name__)

Format = Literal["keras", "savedmodel", "litert", "weights"]
FORMATS: tuple[Format, ...] = ("keras", "savedmodel", "litert", "weights")

# Reading and compressing in pieces of this size: an archive is never held whole in memory.
CHUNK_BYTES = 1 << 20
# gzip's fastest level: weights are float32 noise that compresses by a tenth whatever the level, and the graph
# compresses well at any level.
GZIP_LEVEL = 1
BLOCK = tarfile.BLOCKSIZE


# --- made by the worker -------------------------------------------------------------------------------------------


def export_savedmodel(model: Any, *, input_shape: tuple[int, ...], rescale: float | None, directory: Path) -> None:
    """Write ``model`` to ``directory`` as a SavedModel whose ``serving_default`` takes ``input`` in the dataset's
    units, applies ``rescale`` as the service's prediction graph does (one float32 multiplication), and answers
    ``{"output": ...}``."""
    import keras
    import numpy as np
    import tensorflow as tf

    scale = None if rescale is None else np.float32(rescale)

    def serve(x: Any) -> dict[str, Any]:
        if scale is not None:
            x = x * scale
        return {OUTPUT_NAME: model(x, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    signature = [tf.TensorSpec([None, *input_shape], tf.float32, name=INPUT_NAME)]
    archive.add_endpoint(SIGNATURE, serve, input_signature=signature)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the endpoints it wrote
        archive.write_out(str(directory))


def _pack(directory: Path, out: BinaryIO) -> None:
    """The directory's files as a plain tar, paths relative to it, in a stable order."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)


@dataclass
class Exports:
    """What :func:`write_exports` made: the records for ``ModelRow.exports`` and ``ModelRow.litert``, and the
    keys of the files it stored (to remove if the model is not published after all)."""

    exports: dict[str, Any]
    litert: dict[str, Any]
    files: list[str]


def write_exports(
    model: Any,
    *,
    store: Store,
    model_id: str,
    input_shape: tuple[int, ...],
    rescale: float | None,
    litert_off: str | None = None,
) -> Exports:
    """Export the trained ``model`` beside its ``.keras`` file: its SavedModel archive, its flatbuffer (converted
    from that SavedModel; none when ``litert_off`` says why) and its weights. A format that fails is recorded with
    its error and the others are still made; nothing here fails the job."""
    exports: dict[str, Any] = {}
    files: list[str] = []
    flatbuffer: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="trainserve-export-") as scratch:
        saved = Path(scratch) / "savedmodel"
        try:
            export_savedmodel(model, input_shape=input_shape, rescale=rescale, directory=saved)
        except Exception as exc:
            log.exception("model %s: no SavedModel", model_id)
            exports["savedmodel"] = {"error": _error(exc)}
            flatbuffer = {"error": f"the model did not export as a SavedModel: {_error(exc)}"}
        else:
            key = export_key(model_id, "savedmodel")
            files.append(key)
            sha256, size = store.put_with(key, lambda f: _pack(saved, f))
            exports["savedmodel"] = {"sha256": sha256, "size_bytes": size}
            flatbuffer = _flatbuffer(model, saved, store, model_id, litert_off, files)
        exports["weights"] = _weights(model, store, model_id, Path(scratch), files)
    return Exports(exports, flatbuffer, files)


def _flatbuffer(
    model: Any, saved: Path, store: Store, model_id: str, litert_off: str | None, files: list[str]
) -> dict[str, Any]:
    from service.serving import litert

    if litert_off is not None:
        return {"error": litert_off}
    try:
        litert.check_convertible(model)
        content = litert.convert_saved_model(saved, SIGNATURE)
    except litert.ConversionError as exc:
        log.warning("model %s has no LiteRT flatbuffer: %s", model_id, exc)
        return {"error": str(exc)}
    key = litert_key(model_id)
    files.append(key)
    return {"sha256": store.put_bytes(key, content), "size_bytes": len(content), "rescaled": True}


def _weights(model: Any, store: Store, model_id: str, scratch: Path, files: list[str]) -> dict[str, Any]:
    key = export_key(model_id, "weights")
    saved = scratch / key  # Keras wants the name to end as the key does
    try:
        model.save_weights(str(saved))
        files.append(key)
        sha256, size = store.put_file(key, saved), saved.stat().st_size
    except Exception as exc:
        log.exception("model %s: no weights file", model_id)
        return {"error": _error(exc)}
    return {"sha256": sha256, "size_bytes": size}


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:2000]


def link_exports(store: Store, source_id: str, copy_id: str, exports: dict[str, Any] | None) -> dict[str, Any] | None:
    """A model published again under another id (an experiment's best trial under the experiment's name) gets the
    same export files, stored again under its own id (hard-linked in a local store); a file gone from the store is
    recorded as missing."""
    if exports is None:
        return None
    linked: dict[str, Any] = {}
    for export, record in exports.items():
        if export not in EXPORT_SUFFIXES or "sha256" not in record:
            linked[export] = record
            continue
        try:
            store.copy(export_key(source_id, export), export_key(copy_id, export))
        except FileNotFoundError:
            linked[export] = {"error": f"the {export} export of model {source_id} is missing from the store"}
        else:
            linked[export] = record
    return linked


def remove_exports(store: Store, model_id: str) -> None:
    for export in EXPORT_SUFFIXES:
        store.delete(export_key(model_id, export))


# --- streamed by the API ------------------------------------------------------------------------------------------


class ExportUnavailableError(Exception):
    """A model has no export in the format asked for; the message says why."""


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A name for a directory or a file on any filesystem: the name itself when it is plain, else its plain
    characters (others as ``_``) and a short hash of it, so that two names never meet."""
    plain = _UNSAFE.sub("_", name).strip("._-")[:100]
    if plain == name:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{plain}_{digest}" if plain else f"model_{digest}"


def recorded(record: dict[str, Any] | None, export: str, model_id: str) -> str:
    """The sha256 of a model's export, or ExportUnavailableError saying why it has none."""
    if record is None:
        raise ExportUnavailableError(
            f"model {model_id} was published before this service exported models as {export}: download it as "
            f"keras and export it yourself, or train it again"
        )
    entry = record.get(export) or {}
    if "sha256" not in entry:
        raise ExportUnavailableError(f"model {model_id} has no {export} export: {entry.get('error', 'unknown')}")
    return str(entry["sha256"])


def litert_sha256(record: dict[str, Any] | None, rescale: float | None, model_id: str) -> str:
    """The sha256 of the model's flatbuffer, or ExportUnavailableError saying why it has none to give."""
    if record is None:
        raise ExportUnavailableError(
            f"model {model_id} has no LiteRT flatbuffer: it was published before flatbuffers were made"
        )
    if "sha256" not in record:
        raise ExportUnavailableError(f"model {model_id} has no LiteRT flatbuffer: {record.get('error', 'unknown')}")
    if rescale is not None and not record.get("rescaled"):
        raise ExportUnavailableError(
            f"model {model_id}'s flatbuffer was made before flatbuffers applied the rescale: it takes inputs "
            f"already multiplied by {rescale:g}, unlike the other exports; train the model again for one that "
            f"takes the dataset's units"
        )
    return str(record["sha256"])


def savedmodel_archive(store: Store, model_id: str, sha256: str, *, name: str, version: int) -> Iterator[bytes]:
    """The model's stored SavedModel as a ``.tar.gz`` in TensorFlow Serving's layout, ``<name>/<version>/...``,
    in pieces. The stored file is checked against ``sha256`` before anything is sent (StoreError), and again as it
    is read: a file that changed meanwhile ends the archive unfinished, never a whole archive of other bytes."""
    path = store.local(export_key(model_id, "savedmodel"), sha256, f"SavedModel of model {model_id}")
    return rebased_archive(path, sha256, f"{safe_name(name)}/{version}")


def rebased_archive(path: Path, sha256: str, prefix: str) -> Iterator[bytes]:
    """A stored tar's members under ``prefix`` (its directories first), as a ``.tar.gz`` in pieces; StoreError
    before the archive's end when the file's sha256 is not ``sha256``."""
    digest = _HashingReader(path.open("rb"))
    with digest, tarfile.open(fileobj=digest, mode="r|") as source:

        def members() -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
            yield _directory(prefix.partition("/")[0]), None
            yield _directory(prefix), None
            for member in source:
                if not (member.isfile() or member.isdir()) or member.name.startswith(("/", "..")):
                    raise StoreError(f"the stored SavedModel holds {member.name!r}, which no export does")
                entry = tarfile.TarInfo(f"{prefix}/{member.name}")
                entry.type, entry.size, entry.mtime, entry.mode = member.type, member.size, member.mtime, member.mode
                yield entry, source.extractfile(member) if member.isfile() else None
            digest.drain()
            if digest.hexdigest() != sha256:
                raise StoreError(f"{path.name} changed while it was sent")

        yield from tar_stream(members(), gzip=True)


def _directory(name: str) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type, entry.mode = tarfile.DIRTYPE, 0o755
    return entry


class _HashingReader(io.RawIOBase):
    """A file read once, its sha256 taken on the way."""

    def __init__(self, file: io.BufferedReader) -> None:
        self.file = file
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.file.readinto(buffer)
        if count:
            self.hash.update(memoryview(buffer)[:count])
        return int(count or 0)

    def drain(self) -> None:
        while self.read(CHUNK_BYTES):
            pass

    def hexdigest(self) -> str:
        return self.hash.hexdigest()

    def close(self) -> None:
        self.file.close()
        super().close()


def tar_stream(members: Iterable[tuple[tarfile.TarInfo, IO[bytes] | None]], *, gzip: bool) -> Iterator[bytes]:
    """A tar archive (gzip-compressed with ``gzip``) of ``members`` — each a header and, for a file, a stream of
    exactly ``info.size`` bytes — in pieces of at most about :data:`CHUNK_BYTES`: it never holds more than a piece."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None  # 31: the gzip format

    def out(data: bytes) -> bytes:
        return compressor.compress(data) if compressor is not None else data

    for info, source in members:
        piece = out(info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict"))
        if piece:
            yield piece
        if source is None:
            continue
        left = info.size
        while left:
            data = source.read(min(CHUNK_BYTES, left))
            if not data:
                raise StoreError(f"{info.name} ended {left} bytes before its size")
            left -= len(data)
            piece = out(data)
            if piece:
                yield piece
        if info.size % BLOCK:
            piece = out(b"\0" * (BLOCK - info.size % BLOCK))
            if piece:
                yield piece
    yield out(b"\0" * (2 * BLOCK)) + (compressor.flush() if compressor is not None else b"")


def verified_export(store: Store, model_id: str, export: str, sha256: str) -> Path:
    """A stored export file, once it is found to be the one recorded (StoreError otherwise)."""
    key = litert_key(model_id) if export == "litert" else export_key(model_id, export)
    what = {"litert": "flatbuffer", "weights": "weights file", "savedmodel": "SavedModel"}[export]
    return store.local(key, sha256, f"{what} of model {model_id}")
