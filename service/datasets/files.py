"""Dataset files as arrays: NumPy `.npz`, `.csv` with a header, and `.zip` of class-named image folders.

Each parser reads a file already on disk and returns the inputs (image pixels as uint8, other numbers as float32)
with int64 class numbers 0..k-1, or raises ``DatasetFileError`` with a reason the user can act on. Nothing here
touches the database or the dataset store.

The files come from strangers, so every cost is counted before it is paid (``IngestLimits``): an array's size
from its ``.npy`` header before a byte of it is decoded, and decoded in blocks straight into its final form;
an image's pixels from its header before it is decoded; a zip's entries before any is read (no member listed
twice, none overlapping another, only the compression methods this reads, nothing encrypted). Labels become
class numbers as they are read, never a fixed-width array of every label's text.
"""

from __future__ import annotations

import array
import csv
import dataclasses
import io
import itertools
import math
import struct
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt

from service.datasets.builtin import IntArray, NumberArray
from service.datasets.text import Side, TextEncoding, pad, vocabulary, words

Kind = Literal["npz", "csv", "images"]
ColorMode = Literal["grayscale", "rgb", "rgba"]

KINDS_BY_SUFFIX: dict[str, Kind] = {".npz": "npz", ".csv": "csv", ".zip": "images"}
CHANNELS: dict[ColorMode, int] = {"grayscale": 1, "rgb": 3, "rgba": 4}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# A sample may have at most 4 dimensions, as a model's input_shape may.
MAX_SAMPLE_DIMS = 4
# A .npy header longer than this is not one numpy writes.
MAX_NPY_HEADER = 65_535
# Arrays are decoded this many bytes at a time.
BLOCK_BYTES = 4 * 1024 * 1024
FLOAT32_MAX = float(np.finfo(np.float32).max)
READABLE_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
# Words a text is cut or padded to when the upload does not say.
TEXT_MAXLEN = 100


class DatasetFileError(Exception):
    """The file cannot become a dataset; ``field`` is the form field to blame (usually the file itself).
    ``status`` is 413 when the file is refused for its size, else 422."""

    def __init__(self, message: str, field: str = "file", status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@dataclass(frozen=True)
class IngestLimits:
    """What reading one upload may cost; each limit is a setting, named when it refuses."""

    max_stored_bytes: int = 1024**3
    max_files: int = 100_000
    max_image_pixels: int = 40_000_000
    max_decoded_pixels: int = 1_000_000_000
    max_label_length: int = 256
    max_classes: int = 10_000
    max_csv_columns: int = 100_000
    # Distinct words counted while a text .csv's vocabulary is chosen.
    max_distinct_words: int = 2_000_000
    seconds: float = 300.0
    # Bytes left under the quota of all datasets together (None: no quota).
    quota_left: int | None = None

    def check_stored(self, what: str, size: int) -> None:
        """Refuse before decoding when the arrays would be more than may be stored."""
        if size > self.max_stored_bytes:
            raise DatasetFileError(
                f"{what} would take {size:,} bytes as stored arrays; the limit is {self.max_stored_bytes:,} "
                f"(TRAINSERVE_MAX_DATASET_BYTES)",
                status=413,
            )
        if self.quota_left is not None and size > self.quota_left:
            raise DatasetFileError(
                f"{what} would take {size:,} bytes as stored arrays; {max(0, self.quota_left):,} are left of the "
                f"datasets' quota (TRAINSERVE_DATASET_QUOTA_BYTES): delete datasets no longer needed",
                status=413,
            )


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise DatasetFileError(
                f"reading the file took longer than {self.seconds:g} s (TRAINSERVE_INGEST_TIME_LIMIT)", status=413
            )


@dataclass(frozen=True)
class UploadOptions:
    """How to read the file. Only the options of the file's kind shape its arrays (see ``for_kind``)."""

    label_column: str = "label"
    image_size: tuple[int, int] = (64, 64)
    color_mode: ColorMode = "rgb"
    # A .csv of texts: the column that holds them, and how they become sequences (``service.datasets.text``).
    text_column: str | None = None
    num_words: int = 10_000
    # None: texts are cut to 100 words, ragged sequences padded to the longest, as pad_sequences does.
    maxlen: int | None = None
    padding: Side = "pre"
    truncating: Side = "pre"

    @property
    def sequence_options(self) -> dict[str, Any]:
        return {"maxlen": self.maxlen, "padding": self.padding, "truncating": self.truncating}

    def for_kind(self, kind: Kind) -> dict[str, Any]:
        if kind == "csv" and self.text_column is not None:
            return {
                "label_column": self.label_column,
                "text_column": self.text_column,
                "num_words": self.num_words,
                **self.sequence_options,
                "maxlen": self.maxlen or TEXT_MAXLEN,
            }
        if kind == "csv":
            return {"label_column": self.label_column}
        if kind == "images":
            return {"image_size": list(self.image_size), "color_mode": self.color_mode}
        # A .npz: only ragged sequences are shaped by these, and only when they are given.
        return {} if self.sequence_options == UploadOptions().sequence_options else self.sequence_options


@dataclass
class ParsedDataset:
    x_train: NumberArray
    y_train: IntArray
    x_test: NumberArray | None
    y_test: IntArray | None
    num_classes: int
    class_names: list[str] | None
    # How the texts of a text .csv became x.
    text: TextEncoding | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self.x_train, self.y_train, self.x_test, self.y_test)
        return sum(a.nbytes for a in arrays if a is not None)


def kind_of(filename: str) -> Kind | None:
    return KINDS_BY_SUFFIX.get(PurePosixPath(filename).suffix.lower())


def parse(path: Path, kind: Kind, options: UploadOptions, limits: IngestLimits) -> ParsedDataset:
    """Read and check a dataset file within ``limits``."""
    deadline = Deadline(limits.seconds)
    if kind == "npz":
        return parse_npz(path, limits, deadline, options)
    if kind == "csv" and options.text_column is not None:
        return parse_text_csv(path, options, limits, deadline)
    if kind == "csv":
        return parse_csv(path, options.label_column, limits, deadline)
    return parse_images(path, options.image_size, options.color_mode, limits, deadline)


def quoted(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, cut short: a message never grows with the input."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def listing(names: list[str], most: int = 10) -> str:
    shown = ", ".join(quoted(name, 40) for name in names[:most])
    return shown if len(names) <= most else f"{shown}, … ({len(names):,} in all)"


# --- zip files --------------------------------------------------------------------------------------------------


def open_zip(path: Path, what: str, limits: IngestLimits) -> zipfile.ZipFile:
    """A zip whose entries may be read: at most ``max_files`` of them, each named once, none overlapping another
    (one member's bytes listed under many names would be decoded many times), none encrypted, each stored or
    deflated."""
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except Exception as exc:  # zipfile's reader meets hand-made archives with many kinds of error
        raise DatasetFileError(f"not a valid {what}: {_first_line(exc)}") from exc
    try:
        if len(infos) > limits.max_files:
            raise DatasetFileError(
                f"the {what} holds {len(infos):,} files, more than {limits.max_files:,} (TRAINSERVE_MAX_DATASET_FILES)",
                status=413,
            )
        names: set[str] = set()
        for info in infos:
            if not info.filename:
                raise DatasetFileError(f"the {what} holds an entry without a name")
            if info.filename in names:
                raise DatasetFileError(f"the {what} holds {quoted(info.filename)} more than once")
            names.add(info.filename)
            if info.flag_bits & 0x1:
                raise DatasetFileError(f"{quoted(info.filename)} in the {what} is encrypted; upload it unencrypted")
            if info.compress_type not in READABLE_COMPRESSION:
                raise DatasetFileError(
                    f"{quoted(info.filename)} in the {what} is compressed with method {info.compress_type}; "
                    f"this service reads stored or deflated members"
                )
        spans = sorted((info.header_offset, info.compress_size, info.filename) for info in infos)
        for (start, size, name), (next_start, _, next_name) in itertools.pairwise(spans):
            if next_start < start + 30 + size:  # a local header is 30 bytes, then name, extra field and data
                raise DatasetFileError(
                    f"the {what} lists the same data more than once ({quoted(name)} and {quoted(next_name)} overlap)"
                )
    except BaseException:
        zf.close()
        raise
    return zf


def _open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> IO[bytes]:
    try:
        return zf.open(info)
    except Exception as exc:
        raise DatasetFileError(
            f"the {what} is damaged: {quoted(info.filename)} cannot be read: {_first_line(exc)}"
        ) from exc


def _read(stream: IO[bytes], size: int, info: zipfile.ZipInfo, what: str) -> bytes:
    try:
        data = stream.read(size)
    except Exception as exc:
        raise DatasetFileError(
            f"the {what} is damaged: {quoted(info.filename)} cannot be read: {_first_line(exc)}"
        ) from exc
    return data


def _damaged(what: str, info: zipfile.ZipInfo, exc: BaseException) -> DatasetFileError:
    return DatasetFileError(f"the {what} is damaged: {quoted(info.filename)} cannot be read: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# --- .npz -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` member says of its array, read before any of its data."""

    name: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype[Any]
    data_offset: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def describe(self) -> str:
        return f"{self.dtype} of shape {list(self.shape)[:8]}"


def read_npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> NpyHeader:
    """The header of a .npy member, read from its first bytes only, and checked against the member's size."""
    what = "the .npz"
    with _open_member(zf, info, what) as stream:
        start = _read(stream, 12, info, what)
        if len(start) < 10 or start[:6] != b"\x93NUMPY":
            raise DatasetFileError(f"{name!r} in the .npz is not a .npy array")
        major = start[6]
        if major == 1:
            (length,), prefix = struct.unpack("<H", start[8:10]), 10
        elif major in (2, 3) and len(start) >= 12:
            (length,), prefix = struct.unpack("<I", start[8:12]), 12
        else:
            raise DatasetFileError(f"{name!r} in the .npz is a .npy array of an unknown format version {major}")
        if length > MAX_NPY_HEADER:
            raise DatasetFileError(f"{name!r} in the .npz has a {length:,}-byte header; numpy writes at most 64 KiB")
        needed = prefix + length - len(start)
        header = start[: prefix + length] if needed <= 0 else start + _read(stream, needed, info, what)
    try:
        stream_copy = io.BytesIO(header)
        version = np.lib.format.read_magic(stream_copy)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(stream_copy, max_header_size=MAX_NPY_HEADER + 1)
    except Exception as exc:  # whatever numpy's parser meets in a hand-made header: it is not a valid one
        raise DatasetFileError(f"{name!r} in the .npz has an unreadable .npy header: {_first_line(exc)}") from exc
    if not all(type(d) is int and d >= 0 for d in shape):
        raise DatasetFileError(f"{name!r} in the .npz declares the shape {list(shape)[:8]}")
    if dtype.hasobject:
        raise DatasetFileError(
            f"array {name!r} holds Python objects, which only pickle can load, and pickles are not accepted; "
            f"save numbers (or, for labels, strings)"
        )
    parsed = NpyHeader(name, info, tuple(shape), bool(fortran_order), dtype, len(header))
    if info.file_size != parsed.data_offset + parsed.nbytes:
        raise DatasetFileError(
            f"{name!r} in the .npz declares {parsed.describe()} ({parsed.nbytes:,} bytes) but holds "
            f"{max(0, info.file_size - parsed.data_offset):,} bytes of data"
        )
    return parsed


def _blocks(zf: zipfile.ZipFile, header: NpyHeader, deadline: Deadline) -> Iterator[np.ndarray[Any, Any]]:
    """The member's values in storage order, a block at a time."""
    what = "the .npz"
    itemsize = header.dtype.itemsize
    per_block = max(1, BLOCK_BYTES // max(1, itemsize))
    with _open_member(zf, header.info, what) as stream:
        _read(stream, header.data_offset, header.info, what)
        remaining = header.count
        while remaining:
            deadline.check()
            take = min(per_block, remaining)
            data = _read(stream, take * itemsize, header.info, what)
            if len(data) != take * itemsize:
                raise DatasetFileError(f"{header.name!r} in the .npz is truncated")
            yield np.frombuffer(data, dtype=header.dtype)
            remaining -= take


def _decode_into(zf: zipfile.ZipFile, header: NpyHeader, out: np.ndarray[Any, Any], deadline: Deadline) -> None:
    """Decode a member into ``out`` (its final dtype, in C order), converting block by block."""
    storage = out if not header.fortran_order else np.empty(header.shape[::-1], out.dtype).T
    flat = storage.T.reshape(-1) if header.fortran_order else storage.reshape(-1)
    position = 0
    for block in _blocks(zf, header, deadline):
        flat[position : position + len(block)] = block
        position += len(block)
    if header.fortran_order:
        out[...] = storage


def parse_npz(
    path: Path, limits: IngestLimits, deadline: Deadline | None = None, options: UploadOptions | None = None
) -> ParsedDataset:
    """``x``/``y``, or ``x_train``/``y_train`` with optional ``x_test``/``y_test``; optional ``class_names``.
    Sequences of different lengths come as ``<x>_values`` (every sequence's integers, one after another) and
    ``<x>_offsets`` (where each starts, and the end: rows + 1 of them), and are padded as ``pad_sequences`` pads
    them (``maxlen``, ``padding``, ``truncating``).

    Arrays of Python objects are refused, never unpickled; every array's size is known from its header before
    any of it is decoded."""
    deadline = deadline or Deadline(limits.seconds)
    options = options or UploadOptions()
    with open_zip(path, ".npz file (a zip of .npy arrays)", limits) as zf:
        headers: dict[str, NpyHeader] = {}
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise DatasetFileError(f"{quoted(info.filename)} in the .npz is not a .npy array")
            name = info.filename[: -len(".npy")]
            headers[name] = read_npy_header(zf, info, name)
        ragged = _ragged(zf, headers, options, limits, deadline)
        keys, has_test = _layout(set(headers))
        x_name, y_name = keys
        x_header, y_header = headers[x_name], headers[y_name]
        test = (headers["x_test"], headers["y_test"]) if has_test else None
        names_header = headers.get("class_names")

        _check_inputs(x_header)
        _check_labels(y_header, x_header, limits)
        if test is not None:
            _check_inputs(test[0])
            _check_labels(test[1], test[0], limits)
            if test[0].shape[1:] != x_header.shape[1:]:
                raise DatasetFileError(
                    f"x_test samples have shape {list(test[0].shape[1:])} but {x_name} samples have "
                    f"{list(x_header.shape[1:])}; they must match"
                )
        class_names = _read_class_names(zf, names_header, limits, deadline) if names_header else None

        raw = sum(header.nbytes for header in headers.values())
        if raw > 4 * limits.max_stored_bytes:
            raise DatasetFileError(
                f"the .npz holds {raw:,} bytes of arrays; this service reads at most four times what it may store "
                f"(TRAINSERVE_MAX_DATASET_BYTES: {limits.max_stored_bytes:,})",
                status=413,
            )
        x_dtype = np.int32 if ragged else _stored_dtype(x_header.dtype)
        stored = sum(
            h.count * np.dtype(x_dtype).itemsize if h.name.startswith("x") else h.shape[0] * 8
            for h in (x_header, y_header, *(test or ()))
        )
        limits.check_stored("the .npz", stored)

        x_train = ragged[x_name].read() if x_name in ragged else _read_inputs(zf, x_header, x_dtype, deadline)
        if test is None:
            x_test = None
        else:
            x_test = ragged["x_test"].read() if "x_test" in ragged else _read_inputs(zf, test[0], x_dtype, deadline)
        labels = LabelEncoder(limits, class_names)
        y_train = labels.read_member(zf, y_header, deadline)
        y_test = labels.read_member(zf, test[1], deadline) if test else None
    y_train, y_test, num_classes, names = labels.finish(y_train, y_test, y_name)
    return ParsedDataset(x_train, y_train, x_test, y_test, num_classes, names)


@dataclass
class RaggedSequences:
    """Sequences of different lengths (values + offsets), to be padded as ``pad_sequences`` pads them."""

    zf: zipfile.ZipFile
    values: NpyHeader
    offsets: npt.NDArray[np.int64]
    maxlen: int
    padding: Side
    truncating: Side
    deadline: Deadline

    def read(self) -> NumberArray:
        values = np.empty(self.values.shape, dtype=np.int64)
        _decode_into(self.zf, self.values, values, self.deadline)
        if values.size and values.min() < 0:
            raise DatasetFileError(f"{self.values.name} holds negative word indexes ({int(values.min())})")
        if values.size and values.max() > np.iinfo(np.int32).max:
            raise DatasetFileError(f"{self.values.name} holds indexes beyond int32 ({int(values.max())})")
        rows = len(self.offsets) - 1
        out: NumberArray = np.zeros((rows, self.maxlen), dtype=np.int32)
        for row in range(rows):
            if row % 10_000 == 0:
                self.deadline.check()
            start, end = int(self.offsets[row]), int(self.offsets[row + 1])
            out[row] = pad(values[start:end].tolist(), self.maxlen, self.padding, self.truncating)
        return out


def _ragged(
    zf: zipfile.ZipFile,
    headers: dict[str, NpyHeader],
    options: UploadOptions,
    limits: IngestLimits,
    deadline: Deadline,
) -> dict[str, RaggedSequences]:
    """The ragged inputs of a .npz (``x_values`` + ``x_offsets``, and the same for ``x_train`` and ``x_test``),
    each replaced in ``headers`` by the header of the padded array it becomes."""
    pairs: list[tuple[str, NpyHeader, NpyHeader, npt.NDArray[np.int64]]] = []
    for base in ("x", "x_train", "x_test"):
        values, offsets = headers.get(f"{base}_values"), headers.get(f"{base}_offsets")
        if values is None and offsets is None:
            continue
        if values is None or offsets is None:
            raise DatasetFileError(f"the .npz has only one of '{base}_values' and '{base}_offsets'; give both")
        if base in headers:
            raise DatasetFileError(f"the .npz has both {base!r} and '{base}_values'; keep one of the two layouts")
        for header in (values, offsets):
            if header.dtype.kind not in "iu" or len(header.shape) != 1:
                raise DatasetFileError(f"{header.name} must be a 1-D array of integers; got {header.describe()}")
        if offsets.shape[0] < 2:
            raise DatasetFileError(
                f"{offsets.name} needs rows + 1 offsets, at least 2: where each sequence starts, then the end"
            )
        limits.check_stored("the .npz", offsets.nbytes)
        starts = np.empty(offsets.shape, dtype=np.int64)
        _decode_into(zf, offsets, starts, deadline)
        if starts[0] != 0 or starts[-1] != values.shape[0] or (np.diff(starts) < 0).any():
            raise DatasetFileError(
                f"{offsets.name} must start at 0, never decrease and end at the length of {values.name} "
                f"({values.shape[0]:,}); it runs from {int(starts[0])} to {int(starts[-1])}"
            )
        pairs.append((base, values, offsets, starts))
    if not pairs:
        return {}
    if "x_test" in headers and "x_test" not in {base for base, *_ in pairs}:
        raise DatasetFileError("x_train holds ragged sequences but x_test does not; give both as values + offsets")
    # Every split padded to one length: the request's, or the longest sequence of any split.
    maxlen = options.maxlen or max(1, *(int(np.diff(starts).max()) for *_, starts in pairs))
    rows = sum(offsets.shape[0] - 1 for _, _, offsets, _ in pairs)
    limits.check_stored("the padded sequences", rows * maxlen * 4)
    found: dict[str, RaggedSequences] = {}
    for base, values, offsets, starts in pairs:
        found[base] = RaggedSequences(zf, values, starts, maxlen, options.padding, options.truncating, deadline)
        del headers[values.name], headers[offsets.name]
        shape = (offsets.shape[0] - 1, maxlen)
        headers[base] = dataclasses.replace(values, name=base, shape=shape, dtype=np.dtype(np.int32))
    return found


def _layout(names: set[str]) -> tuple[tuple[str, str], bool]:
    if {"x_train", "y_train"} <= names:
        if "x" in names or "y" in names:
            raise DatasetFileError("the .npz has both 'x' and 'x_train'; keep one of the two layouts")
        keys = ("x_train", "y_train")
    elif {"x", "y"} <= names:
        keys = ("x", "y")
    else:
        found = listing(sorted(names)) or "none"
        raise DatasetFileError(
            f"the .npz has no 'x' and 'y' arrays (found: {found}); expected 'x' and 'y', or 'x_train' and "
            f"'y_train' with optional 'x_test' and 'y_test'"
        )
    has_test = "x_test" in names or "y_test" in names
    if has_test and not {"x_test", "y_test"} <= names:
        raise DatasetFileError("the .npz has only one of 'x_test' and 'y_test'; give both or neither")
    return keys, has_test


def _check_inputs(header: NpyHeader) -> None:
    if header.dtype.kind not in "biuf":
        raise DatasetFileError(f"{header.name} holds {header.dtype} values; inputs must be numbers")
    if len(header.shape) < 2 or len(header.shape) > MAX_SAMPLE_DIMS + 1:
        raise DatasetFileError(
            f"{header.name} has shape {list(header.shape)[:8]}; expected (rows, features) or "
            f"(rows, height, width[, channels]): one row per sample, each of 1 to {MAX_SAMPLE_DIMS} dimensions"
        )
    if header.shape[0] == 0:
        raise DatasetFileError(f"{header.name} has no rows")
    if 0 in header.shape:
        raise DatasetFileError(f"{header.name} has shape {list(header.shape)}: its samples are empty")


def _check_labels(header: NpyHeader, inputs: NpyHeader, limits: IngestLimits) -> None:
    name = header.name
    kind = header.dtype.kind
    if kind not in "biufUS":
        raise DatasetFileError(f"{name} holds {header.dtype} values; labels must be class numbers or class names")
    if len(header.shape) == 2 and kind in "biuf" and header.shape[1] > 1:
        if header.shape[1] > limits.max_classes:
            raise DatasetFileError(
                f"{name} has one-hot rows of {header.shape[1]:,} classes, more than {limits.max_classes:,} "
                f"(TRAINSERVE_MAX_CLASSES)"
            )
    elif not (len(header.shape) == 1 or (len(header.shape) == 2 and header.shape[1] == 1)):
        raise DatasetFileError(f"{name} has shape {list(header.shape)[:8]}; expected one label per row, shape (rows,)")
    if kind in "US":
        _check_label_width(header, limits)
    if header.shape[0] != inputs.shape[0]:
        raise DatasetFileError(
            f"{inputs.name} has {inputs.shape[0]} rows but {name} has {header.shape[0]}; they must match"
        )


def _check_label_width(header: NpyHeader, limits: IngestLimits) -> None:
    characters = header.dtype.itemsize // (4 if header.dtype.kind == "U" else 1)
    if characters > limits.max_label_length:
        raise DatasetFileError(
            f"{header.name} holds strings of up to {characters:,} characters; a class name may have at most "
            f"{limits.max_label_length:,} (TRAINSERVE_MAX_LABEL_LENGTH)"
        )


def _stored_dtype(dtype: np.dtype[Any]) -> type[np.generic]:
    """Bytes stay bytes (pixels, a quarter of the room); every other number is stored as float32."""
    return np.uint8 if dtype == np.uint8 else np.float32


def _read_inputs(zf: zipfile.ZipFile, header: NpyHeader, dtype: type[np.generic], deadline: Deadline) -> NumberArray:
    out: NumberArray = np.empty(header.shape, dtype)
    if dtype is np.float32 and header.dtype.kind == "f" and header.dtype.itemsize > 4:
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes infinity, refused below
            _decode_into(zf, header, out, deadline)
    else:
        _decode_into(zf, header, out, deadline)
    if dtype is np.float32:
        require_finite(out, header.name)
    return out


def _read_class_names(zf: zipfile.ZipFile, header: NpyHeader, limits: IngestLimits, deadline: Deadline) -> list[str]:
    if len(header.shape) != 1 or header.dtype.kind not in "US":
        raise DatasetFileError(f"class_names must be a 1-D array of strings; got {header.describe()}")
    if header.shape[0] > limits.max_classes:
        raise DatasetFileError(
            f"class_names has {header.shape[0]:,} names, more than {limits.max_classes:,} (TRAINSERVE_MAX_CLASSES)"
        )
    _check_label_width(header, limits)
    names = [str(value) for block in _blocks(zf, header, deadline) for value in block.tolist()]
    if len(set(names)) != len(names):
        raise DatasetFileError("class_names holds a name twice; give each class its own name")
    return names


class LabelEncoder:
    """Labels of every split as class numbers 0..k-1, decoded as they are read.

    Integers are class numbers already; strings become classes in sorted order (or the order of ``class_names``);
    one-hot rows become their class numbers."""

    def __init__(self, limits: IngestLimits, class_names: list[str] | None) -> None:
        self.limits = limits
        self.class_names = class_names
        self.index: dict[str, int] = {name: i for i, name in enumerate(class_names or ())}
        self.texts = False
        self.highest = -1

    def read_member(self, zf: zipfile.ZipFile, header: NpyHeader, deadline: Deadline) -> IntArray:
        rows = header.shape[0]
        out: IntArray = np.empty(rows, np.int64)
        width = header.shape[1] if len(header.shape) == 2 else 1
        position = 0
        pending = np.empty(0, header.dtype)
        if header.fortran_order and width > 1:  # column-major one-hot rows: read whole, then encode
            columns = np.concatenate(list(_blocks(zf, header, deadline)))
            out[:] = self.encode(header.name, columns.reshape(width, rows).T, 0)
            return out
        for block in _blocks(zf, header, deadline):
            if width > 1:
                block = np.concatenate([pending, block])
                usable = len(block) - len(block) % width
                pending, block = block[usable:], block[:usable].reshape(-1, width)
            encoded = self.encode(header.name, block, position)
            out[position : position + len(encoded)] = encoded
            position += len(encoded)
        return out

    def encode(self, name: str, block: np.ndarray[Any, Any], first_row: int) -> IntArray:
        if block.dtype.kind in "US":
            self.texts = True
            if self.highest >= 0:
                raise DatasetFileError(f"{name} holds class names where another split holds numbers; use one kind")
            values = block.tolist()
            return np.fromiter(
                (self.text_class(name, str(v), first_row + i) for i, v in enumerate(values)), np.int64, len(values)
            )
        if self.texts:
            raise DatasetFileError(f"{name} holds numbers where another split holds class names; use one kind")
        if block.ndim == 2:
            if not (((block == 0) | (block == 1)).all() and (block.sum(axis=1) == 1).all()):
                raise DatasetFileError(
                    f"{name} has rows of {block.shape[1]} values that are not one-hot; give one label per row"
                )
            numbers: IntArray = block.argmax(axis=1).astype(np.int64)
        else:
            numbers = _class_numbers(name, block, first_row)
        if len(numbers):
            self.highest = max(self.highest, int(numbers.max()))
            if self.highest >= self.limits.max_classes:
                raise DatasetFileError(
                    f"the labels make {self.highest + 1:,} classes, more than {self.limits.max_classes:,} "
                    f"(TRAINSERVE_MAX_CLASSES); labels must be class numbers 0..k-1 or class names"
                )
        return numbers

    def text_class(self, name: str, value: str, row: int) -> int:
        """The class number of a label given as text."""
        self.texts = True
        found = self.index.get(value)
        if found is not None:
            return found
        if self.class_names is not None:
            raise DatasetFileError(f"{name} has label {quoted(value)} (row {row}), which is not in class_names")
        if len(self.index) >= self.limits.max_classes:
            raise DatasetFileError(
                f"{name} has more than {self.limits.max_classes:,} distinct labels (TRAINSERVE_MAX_CLASSES)"
            )
        self.index[value] = len(self.index)
        return self.index[value]

    def finish(
        self, y_train: IntArray, y_test: IntArray | None, train_name: str
    ) -> tuple[IntArray, IntArray | None, int, list[str] | None]:
        """Class numbers in their final order, the number of classes and their names."""
        names = self.class_names
        if self.texts and names is None:
            # Classes in sorted order, numbers (all labels numeric) in numeric order: 2 before 10.
            texts = list(self.index)
            ordered = sorted(texts, key=float) if all(_is_number(t) for t in texts) else sorted(texts)
            remap = np.empty(len(texts), np.int64)
            for final, text in enumerate(ordered):
                remap[self.index[text]] = final
            y_train = remap[y_train]
            y_test = None if y_test is None else remap[y_test]
            names = ordered
        if names is not None:
            num_classes = len(names)
            if not self.texts and self.highest >= num_classes:
                raise DatasetFileError(
                    f"labels go up to {self.highest} but class_names has {num_classes} names; give one name per class"
                )
        else:
            num_classes = self.highest + 1
        distinct = np.unique(y_train)
        if len(distinct) < 2:
            only = names[int(distinct[0])] if names else int(distinct[0])
            raise DatasetFileError(f"{train_name} has one class ({only!r}); a classifier needs at least two")
        return y_train, y_test, num_classes, names


def _class_numbers(name: str, y: np.ndarray[Any, Any], first_row: int) -> IntArray:
    if y.dtype.kind not in "biuf":
        raise DatasetFileError(f"{name} holds {y.dtype} values; labels must be class numbers or class names")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DatasetFileError(f"{name} holds NaN or infinite labels")
        fractional = np.nonzero(y != np.round(y))[0]
        if len(fractional):
            row = int(fractional[0])
            raise DatasetFileError(
                f"{name} holds non-integer labels (row {first_row + row} is {y[row]}); labels must be class numbers "
                f"0..k-1 or class names"
            )
        if len(y) and float(y.max()) >= 2**62:
            raise DatasetFileError(f"{name} holds labels as large as {float(y.max()):g}; class numbers start at 0")
    numbers: IntArray = y.astype(np.int64)
    if len(numbers) and numbers.min() < 0:
        raise DatasetFileError(f"{name} holds negative labels ({int(numbers.min())}); class numbers start at 0")
    return numbers


# --- shared checks ----------------------------------------------------------------------------------------------


def row_blocks(x: np.ndarray[Any, Any], elements: int = 1 << 20) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
    """(first row, rows) blocks of about ``elements`` values: whole-array temporaries would double the memory."""
    rows = max(1, elements // max(1, x[0].size)) if len(x) else 1
    for start in range(0, len(x), rows):
        yield start, x[start : start + rows]


def require_finite(x: np.ndarray[Any, Any], name: str) -> None:
    for start, block in row_blocks(x):
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise DatasetFileError(
                f"{name} holds NaN or infinite values (first in row {row}); fill or drop them before uploading"
            )


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# --- .csv -------------------------------------------------------------------------------------------------------


def parse_csv(path: Path, label_column: str, limits: IngestLimits, deadline: Deadline | None = None) -> ParsedDataset:
    """A header row, numeric feature columns and one label column (numbers or text; each distinct value a class)."""
    deadline = deadline or Deadline(limits.seconds)
    values = array.array("f")  # float32 as parsed: no list of Python floats
    labels = array.array("q")  # class numbers in order of first appearance
    encoder = LabelEncoder(limits, None)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [column.strip() for column in next(reader, [])]
            if not header:
                raise DatasetFileError("the .csv is empty; expected a header row, then one row per sample")
            if len(header) > limits.max_csv_columns:
                raise DatasetFileError(
                    f"the .csv has {len(header):,} columns, more than {limits.max_csv_columns:,} "
                    f"(TRAINSERVE_MAX_CSV_COLUMNS)",
                    status=413,
                )
            if label_column not in header:
                raise DatasetFileError(
                    f"no column {quoted(label_column)} in the header (columns: {listing(header)}); "
                    f"name the label column with the label_column field",
                    field="label_column",
                )
            label_index = header.index(label_column)
            if len(header) < 2:
                raise DatasetFileError("the .csv has only the label column; it needs at least one feature column")
            row_bytes = (len(header) - 1) * 4 + 8
            for line, row in _rows(reader, len(header), deadline):
                for i, cell in enumerate(row):
                    if i == label_index:
                        labels.append(_csv_label(cell, label_column, line, encoder, limits))
                        continue
                    values.append(_feature(cell, header[i], line))
                limits.check_stored("the .csv", len(labels) * row_bytes)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetFileError(f"not a readable UTF-8 .csv file: {_first_line(exc)}") from exc
    if not labels:
        raise DatasetFileError("the .csv has a header but no rows")
    x: NumberArray = np.frombuffer(values, dtype=np.float32).reshape(len(labels), len(header) - 1)
    require_finite(x, "x")
    y, _, num_classes, class_names = encoder.finish(np.frombuffer(labels, dtype=np.int64), None, "y")
    return ParsedDataset(x, y, None, None, num_classes, class_names)


def _rows(reader: Any, width: int, deadline: Deadline) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each row with something in it, every one as wide as the header."""
    for row in reader:
        line = reader.line_num
        if line % 1000 == 0:
            deadline.check()
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != width:
            raise DatasetFileError(f"line {line} has {len(row)} fields; the header has {width}")
        yield line, row


def _csv_label(cell: str, column: str, line: int, encoder: LabelEncoder, limits: IngestLimits) -> int:
    label = cell.strip()
    if not label:
        raise DatasetFileError(f"line {line} has no label in column {quoted(column)}")
    if len(label) > limits.max_label_length:
        raise DatasetFileError(
            f"line {line} has a label of {len(label):,} characters; a class name may have at most "
            f"{limits.max_label_length:,} (TRAINSERVE_MAX_LABEL_LENGTH)"
        )
    return encoder.text_class("y", label, line)


def _feature(cell: str, column: str, line: int) -> float:
    text = cell.strip()
    if not text:
        raise DatasetFileError(f"column {quoted(column)} is empty on line {line}; features must be numbers")
    try:
        value = float(text)
    except ValueError:
        raise DatasetFileError(
            f"column {quoted(column)} is not numeric: line {line} has {quoted(text, 40)}; features must be numbers "
            f"(only the label column may hold text)"
        ) from None
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise DatasetFileError(
            f"column {quoted(column)} is {quoted(text, 40)} on line {line}; features must be finite float32 numbers"
        )
    return value


def parse_text_csv(
    path: Path, options: UploadOptions, limits: IngestLimits, deadline: Deadline | None = None
) -> ParsedDataset:
    """A header row, a column of texts and a label column; other columns are ignored. Read twice: once to count
    the words and choose the vocabulary, once to turn each text into its padded sequence of word indexes."""
    deadline = deadline or Deadline(limits.seconds)
    labels = array.array("q")
    encoder = LabelEncoder(limits, None)
    counts: Counter[str] = Counter()
    maxlen = options.maxlen or TEXT_MAXLEN
    row_bytes = maxlen * 4 + 8
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            text_index, label_index, width = _text_header(next(reader, []), options, limits)
            for line, row in _rows(reader, width, deadline):
                labels.append(_csv_label(row[label_index], options.label_column, line, encoder, limits))
                counts.update(words(row[text_index]))
                if len(counts) > limits.max_distinct_words:
                    raise DatasetFileError(
                        f"the texts hold more than {limits.max_distinct_words:,} distinct words by line {line} "
                        f"(TRAINSERVE_MAX_DISTINCT_WORDS)",
                        status=413,
                    )
                limits.check_stored("the .csv", len(labels) * row_bytes)
            if not labels:
                raise DatasetFileError("the .csv has a header but no rows")
            encoding = TextEncoding(vocabulary(counts, options.num_words), maxlen, options.padding, options.truncating)
            del counts
            x: NumberArray = np.zeros((len(labels), maxlen), dtype=np.int32)
            f.seek(0)
            reader = csv.reader(f)
            next(reader)
            for row_number, (_, row) in enumerate(_rows(reader, width, deadline)):
                x[row_number] = encoding.encode(row[text_index])
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetFileError(f"not a readable UTF-8 .csv file: {_first_line(exc)}") from exc
    y, _, num_classes, class_names = encoder.finish(np.frombuffer(labels, dtype=np.int64), None, "y")
    return ParsedDataset(x, y, None, None, num_classes, class_names, encoding)


def _text_header(header: list[str], options: UploadOptions, limits: IngestLimits) -> tuple[int, int, int]:
    """Where the text and label columns are, and how many columns a row has."""
    header = [column.strip() for column in header]
    if not header:
        raise DatasetFileError("the .csv is empty; expected a header row, then one row per text")
    if len(header) > limits.max_csv_columns:
        raise DatasetFileError(
            f"the .csv has {len(header):,} columns, more than {limits.max_csv_columns:,} (TRAINSERVE_MAX_CSV_COLUMNS)",
            status=413,
        )
    for column, field in ((options.text_column or "", "text_column"), (options.label_column, "label_column")):
        if column not in header:
            raise DatasetFileError(
                f"no column {quoted(column)} in the header (columns: {listing(header)}); name it with the {field} "
                f"field",
                field=field,
            )
    if options.text_column == options.label_column:
        raise DatasetFileError("text_column and label_column name the same column", field="text_column")
    return header.index(options.text_column or ""), header.index(options.label_column), len(header)


# --- .zip of images ---------------------------------------------------------------------------------------------


def parse_images(
    path: Path, size: tuple[int, int], color_mode: ColorMode, limits: IngestLimits, deadline: Deadline | None = None
) -> ParsedDataset:
    """Folders named after classes, holding PNG or JPEG images (``cats/1.png``, ``dogs/2.jpg``), as
    ``keras.utils.image_dataset_from_directory`` reads them: classes in sorted order, images resized
    (bilinear) to ``size`` (height, width), pixel values 0–255 as uint8, shape (rows, height, width, channels)."""
    deadline = deadline or Deadline(limits.seconds)
    with open_zip(path, ".zip file", limits) as zf:
        entries: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or any(part.startswith(".") or part == "__MACOSX" for part in parts):
                continue
            if PurePosixPath(info.filename).suffix.lower() in IMAGE_SUFFIXES:
                entries.append((parts, info))
        if not entries:
            raise DatasetFileError(
                "the .zip holds no PNG or JPEG images; expected folders named after classes (cats/1.png, dogs/2.jpg)"
            )
        # A zip of the folder itself (flowers/roses/1.png): look through the one wrapping folder.
        while all(len(parts) > 2 for parts, _ in entries) and len({parts[0] for parts, _ in entries}) == 1:
            entries = [(parts[1:], info) for parts, info in entries]
        loose = next((info.filename for parts, info in entries if len(parts) < 2), None)
        if loose is not None:
            raise DatasetFileError(
                f"{quoted(loose)} is not in a class folder; put each image in a folder named after its class"
            )
        class_names = sorted({parts[0] for parts, _ in entries})
        if len(class_names) < 2:
            raise DatasetFileError(
                f"the .zip has images in one class folder ({quoted(class_names[0])}); a classifier needs at least two"
            )
        if len(class_names) > limits.max_classes:
            raise DatasetFileError(
                f"the .zip has {len(class_names):,} class folders, more than {limits.max_classes:,} "
                f"(TRAINSERVE_MAX_CLASSES)"
            )
        if any(len(name) > limits.max_label_length for name in class_names):
            raise DatasetFileError(
                f"a class folder's name is longer than {limits.max_label_length:,} characters "
                f"(TRAINSERVE_MAX_LABEL_LENGTH)"
            )
        height, width = size
        channels = CHANNELS[color_mode]
        limits.check_stored(
            f"{len(entries):,} images of {height}×{width}×{channels}", len(entries) * (height * width * channels + 8)
        )
        # No image file is larger than its pixels uncompressed, with room for its chunks.
        max_file_bytes = limits.max_image_pixels * 4 + 1024 * 1024
        entries.sort(key=lambda entry: entry[0])
        index = {name: i for i, name in enumerate(class_names)}
        x = np.empty((len(entries), height, width, channels), dtype=np.uint8)
        y = np.empty(len(entries), dtype=np.int64)
        decoder = ImageDecoder(limits, (height, width), color_mode)
        for i, (parts, info) in enumerate(entries):
            deadline.check()
            if info.file_size > max_file_bytes:
                raise DatasetFileError(
                    f"{quoted(info.filename)} is {info.file_size:,} bytes, more than an image of at most "
                    f"{limits.max_image_pixels:,} pixels needs (TRAINSERVE_MAX_IMAGE_PIXELS)"
                )
            with _open_member(zf, info, ".zip") as stream:
                data = _read(stream, info.file_size, info, ".zip")
            x[i] = decoder.decode(info.filename, data)
            y[i] = index[parts[0]]
    return ParsedDataset(x, y, None, None, len(class_names), class_names)


class ImageDecoder:
    """Decodes one image after another to a fixed size, counting the pixels decoded against the limits."""

    def __init__(self, limits: IngestLimits, size: tuple[int, int], color_mode: ColorMode) -> None:
        self.limits = limits
        self.height, self.width = size
        self.channels = CHANNELS[color_mode]
        self.mode = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}[color_mode]
        self.pixels = 0

    def decode(self, name: str, data: bytes) -> np.ndarray[Any, Any]:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ("PNG", "JPEG"):
                    raise DatasetFileError(f"{quoted(name)} is a {image.format} image; expected PNG or JPEG")
                pixels = image.width * image.height
                if pixels > self.limits.max_image_pixels:
                    raise DatasetFileError(
                        f"{quoted(name)} is {image.width}×{image.height} pixels, more than "
                        f"{self.limits.max_image_pixels:,} (TRAINSERVE_MAX_IMAGE_PIXELS)",
                        status=413,
                    )
                self.pixels += pixels
                if self.pixels > self.limits.max_decoded_pixels:
                    raise DatasetFileError(
                        f"the images hold more than {self.limits.max_decoded_pixels:,} pixels together "
                        f"(TRAINSERVE_MAX_DECODED_PIXELS)",
                        status=413,
                    )
                image.draft(self.mode, (self.width, self.height))  # JPEG: decode at a reduced scale when it can
                resized = image.convert(self.mode).resize((self.width, self.height), Image.Resampling.BILINEAR)
        except DatasetFileError:
            raise
        except Exception as exc:  # whatever the decoder meets in a damaged file: it is not a readable image
            raise DatasetFileError(f"{quoted(name)} is not a readable PNG or JPEG image: {_first_line(exc)}") from exc
        return np.asarray(resized, dtype=np.uint8).reshape(self.height, self.width, self.channels)
