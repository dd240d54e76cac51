"""Dataset files as arrays: NumPy `.npz`, `.csv` with a header, and `.zip` of class-named image folders.

Each parser reads a file already on disk and returns float32 inputs with int64 class labels 0..k-1, or raises
``DatasetFileError`` with a reason the user can act on. Nothing here touches the database or the dataset store.
"""

from __future__ import annotations

import array
import csv
import io
import math
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from service.datasets import FloatArray, IntArray

Kind = Literal["npz", "csv", "images"]
ColorMode = Literal["grayscale", "rgb", "rgba"]

KINDS_BY_SUFFIX: dict[str, Kind] = {".npz": "npz", ".csv": "csv", ".zip": "images"}
CHANNELS: dict[ColorMode, int] = {"grayscale": 1, "rgb": 3, "rgba": 4}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# More classes than this is a regression target or an id column, not a classification label.
MAX_CLASSES = 10_000
# One image larger than this (before resizing) is refused rather than decoded in the API process.
MAX_IMAGE_PIXELS = 40_000_000
# A sample may have at most 4 dimensions, as a model's input_shape may.
MAX_SAMPLE_DIMS = 4


class DatasetFileError(Exception):
    """The file cannot become a dataset; ``field`` is the form field to blame (usually the file itself)."""

    def __init__(self, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class UploadOptions:
    """How to read the file. Only the options of the file's kind shape its arrays (see ``for_kind``)."""

    label_column: str = "label"
    image_size: tuple[int, int] = (64, 64)
    color_mode: ColorMode = "rgb"

    def for_kind(self, kind: Kind) -> dict[str, Any]:
        if kind == "csv":
            return {"label_column": self.label_column}
        if kind == "images":
            return {"image_size": list(self.image_size), "color_mode": self.color_mode}
        return {}


@dataclass
class ParsedDataset:
    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray | None
    y_test: IntArray | None
    num_classes: int
    class_names: list[str] | None


def kind_of(filename: str) -> Kind | None:
    return KINDS_BY_SUFFIX.get(PurePosixPath(filename).suffix.lower())


def parse(path: Path, kind: Kind, options: UploadOptions, max_bytes: int) -> ParsedDataset:
    """Read and check a dataset file; ``max_bytes`` bounds the decoded float32 arrays."""
    if kind == "npz":
        return parse_npz(path, max_bytes)
    if kind == "csv":
        return parse_csv(path, options.label_column, max_bytes)
    return parse_images(path, options.image_size, options.color_mode, max_bytes)


def _too_large(what: str, size: int, max_bytes: int) -> DatasetFileError:
    return DatasetFileError(
        f"{what} would take {size:,} bytes as float32 arrays; the limit is {max_bytes:,} (TRAINSERVE_MAX_DATASET_BYTES)"
    )


# --- .npz -------------------------------------------------------------------------------------------------------


def parse_npz(path: Path, max_bytes: int) -> ParsedDataset:
    """``x``/``y``, or ``x_train``/``y_train`` with optional ``x_test``/``y_test``; optional ``class_names``.

    Loaded with ``allow_pickle=False``: an array of Python objects is refused, never unpickled."""
    try:
        with zipfile.ZipFile(path) as zf:
            stored = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetFileError(f"not a valid .npz file (a zip of .npy arrays): {exc}") from exc
    # Members are decoded whole: bound them before decompressing (a small compressed file can hold a huge array).
    if stored > max_bytes:
        raise _too_large("the .npz", stored, max_bytes)
    with np.load(path, allow_pickle=False) as npz:
        names = set(npz.files)
        if {"x_train", "y_train"} <= names:
            if "x" in names or "y" in names:
                raise DatasetFileError("the .npz has both 'x' and 'x_train'; keep one of the two layouts")
            keys = ("x_train", "y_train")
        elif {"x", "y"} <= names:
            keys = ("x", "y")
        else:
            found = ", ".join(repr(n) for n in sorted(names)) or "none"
            raise DatasetFileError(
                f"the .npz has no 'x' and 'y' arrays (found: {found}); expected 'x' and 'y', or 'x_train' and "
                f"'y_train' with optional 'x_test' and 'y_test'"
            )
        has_test = "x_test" in names or "y_test" in names
        if has_test and not {"x_test", "y_test"} <= names:
            raise DatasetFileError("the .npz has only one of 'x_test' and 'y_test'; give both or neither")
        x_train = _inputs(_member(npz, keys[0]), keys[0], max_bytes)
        y_raw = _member(npz, keys[1])
        x_test = _inputs(_member(npz, "x_test"), "x_test", max_bytes) if has_test else None
        y_test_raw = _member(npz, "y_test") if has_test else None
        class_names = _class_names(_member(npz, "class_names")) if "class_names" in names else None

    _same_length(x_train, y_raw, keys[0], keys[1])
    if x_test is not None and y_test_raw is not None:
        _same_length(x_test, y_test_raw, "x_test", "y_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DatasetFileError(
                f"x_test samples have shape {list(x_test.shape[1:])} but {keys[0]} samples have "
                f"{list(x_train.shape[1:])}; they must match"
            )
    ys = [(keys[1], y_raw)] + ([("y_test", y_test_raw)] if y_test_raw is not None else [])
    encoded, num_classes, class_names = encode_labels(ys, class_names)
    return ParsedDataset(
        x_train, encoded[0], x_test, encoded[1] if len(encoded) > 1 else None, num_classes, class_names
    )


def _member(npz: Any, name: str) -> np.ndarray[Any, Any]:
    try:
        value = npz[name]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DatasetFileError(
                f"array {name!r} holds Python objects, which only pickle can load, and pickles are not accepted; "
                f"save numbers (or, for labels, strings)"
            ) from exc
        raise DatasetFileError(f"array {name!r} cannot be read: {exc}") from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise DatasetFileError(f"array {name!r} cannot be read, the .npz is damaged: {exc}") from exc
    if not isinstance(value, np.ndarray):
        raise DatasetFileError(f"{name!r} in the .npz is not a .npy array")
    return value


def _class_names(value: np.ndarray[Any, Any]) -> list[str]:
    if value.ndim != 1 or value.dtype.kind not in "US":
        raise DatasetFileError(f"class_names must be a 1-D array of strings; got {value.dtype} of shape {value.shape}")
    return [str(name) for name in value.tolist()]


# --- shared checks ----------------------------------------------------------------------------------------------


def _inputs(x: np.ndarray[Any, Any], name: str, max_bytes: int) -> FloatArray:
    """Inputs as float32 of shape (rows, *sample), finite."""
    if x.dtype.kind not in "biuf":
        raise DatasetFileError(f"{name} holds {x.dtype} values; inputs must be numbers")
    if x.ndim < 2 or x.ndim > MAX_SAMPLE_DIMS + 1:
        raise DatasetFileError(
            f"{name} has shape {list(x.shape)}; expected (rows, features) or (rows, height, width[, channels]): "
            f"one row per sample, each of 1 to {MAX_SAMPLE_DIMS} dimensions"
        )
    if len(x) == 0:
        raise DatasetFileError(f"{name} has no rows")
    size = x.size * 4
    if size > max_bytes:
        raise _too_large(name, size, max_bytes)
    values: FloatArray = x.astype(np.float32, copy=False)
    check_finite(values, name)
    return values


def row_blocks(x: np.ndarray[Any, Any], elements: int = 1 << 20) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
    """(first row, rows) blocks of about ``elements`` values: whole-array temporaries would double the memory."""
    rows = max(1, elements // max(1, x[0].size)) if len(x) else 1
    for start in range(0, len(x), rows):
        yield start, x[start : start + rows]


def check_finite(x: FloatArray, name: str) -> None:
    for start, block in row_blocks(x):
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise DatasetFileError(
                f"{name} holds NaN or infinite values (first in row {row}); fill or drop them before uploading"
            )


def _same_length(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], x_name: str, y_name: str) -> None:
    if len(x) != len(y):
        raise DatasetFileError(f"{x_name} has {len(x)} rows but {y_name} has {len(y)}; they must match")


def encode_labels(
    ys: list[tuple[str, np.ndarray[Any, Any]]], class_names: list[str] | None
) -> tuple[list[IntArray], int, list[str] | None]:
    """Labels of each split as class numbers 0..k-1, with k and the class names.

    Integers are class numbers already; strings become classes in sorted order (or the order of ``class_names``);
    one-hot rows become their class numbers."""
    flat = [(name, _one_label_per_row(name, y)) for name, y in ys]
    if all(y.dtype.kind in "US" for _, y in flat):
        names = class_names or sorted({str(v) for _, y in flat for v in y.tolist()})
        index = {name: i for i, name in enumerate(names)}
        encoded: list[IntArray] = []
        for name, y in flat:
            missing = next((str(v) for v in y.tolist() if str(v) not in index), None)
            if missing is not None:
                raise DatasetFileError(f"{name} has label {missing!r}, which is not in class_names")
            encoded.append(np.fromiter((index[str(v)] for v in y.tolist()), dtype=np.int64, count=len(y)))
        num_classes, class_names = len(names), names
    else:
        encoded = [_class_numbers(name, y) for name, y in flat]
        highest = max(int(y.max()) for y in encoded)
        num_classes = highest + 1
        if class_names is not None:
            if len(class_names) < num_classes:
                raise DatasetFileError(
                    f"labels go up to {highest} but class_names has {len(class_names)} names; give one name per class"
                )
            num_classes = len(class_names)
    if num_classes > MAX_CLASSES:
        raise DatasetFileError(
            f"the labels make {num_classes:,} classes (more than {MAX_CLASSES:,}); labels must be class numbers "
            f"0..k-1 or class names"
        )
    train_name, train = flat[0][0], encoded[0]
    distinct = np.unique(train)
    if len(distinct) < 2:
        only = class_names[int(distinct[0])] if class_names else int(distinct[0])
        raise DatasetFileError(f"{train_name} has one class ({only!r}); a classifier needs at least two")
    return encoded, num_classes, class_names


def _one_label_per_row(name: str, y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if y.ndim == 2 and y.shape[1] == 1:
        return y.reshape(-1)
    if y.ndim == 2 and y.dtype.kind in "biuf" and y.shape[1] > 1:
        if ((y == 0) | (y == 1)).all() and (y.sum(axis=1) == 1).all():
            classes: np.ndarray[Any, Any] = y.argmax(axis=1)
            return classes
        raise DatasetFileError(f"{name} has shape {list(y.shape)} but its rows are not one-hot; give one label per row")
    if y.ndim != 1:
        raise DatasetFileError(f"{name} has shape {list(y.shape)}; expected one label per row, shape (rows,)")
    return y


def _class_numbers(name: str, y: np.ndarray[Any, Any]) -> IntArray:
    if y.dtype.kind not in "biuf":
        raise DatasetFileError(f"{name} holds {y.dtype} values; labels must be class numbers or class names")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DatasetFileError(f"{name} holds NaN or infinite labels")
        fractional = np.nonzero(y != np.round(y))[0]
        if len(fractional):
            row = int(fractional[0])
            raise DatasetFileError(
                f"{name} holds non-integer labels (row {row} is {y[row]}); labels must be class numbers 0..k-1 "
                f"or class names"
            )
    numbers: IntArray = y.astype(np.int64)
    if len(numbers) and numbers.min() < 0:
        raise DatasetFileError(f"{name} holds negative labels ({int(numbers.min())}); class numbers start at 0")
    return numbers


# --- .csv -------------------------------------------------------------------------------------------------------


def parse_csv(path: Path, label_column: str, max_bytes: int) -> ParsedDataset:
    """A header row, numeric feature columns and one label column (numbers or text; each distinct value a class)."""
    values = array.array("f")  # float32 as parsed: no list of Python floats
    labels: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [column.strip() for column in next(reader, [])]
            if not header:
                raise DatasetFileError("the .csv is empty; expected a header row, then one row per sample")
            if label_column not in header:
                raise DatasetFileError(
                    f"no column {label_column!r} in the header (columns: {', '.join(map(repr, header))}); "
                    f"name the label column with the label_column field",
                    field="label_column",
                )
            label_index = header.index(label_column)
            if len(header) < 2:
                raise DatasetFileError("the .csv has only the label column; it needs at least one feature column")
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DatasetFileError(f"line {line} has {len(row)} fields; the header has {len(header)}")
                for i, cell in enumerate(row):
                    if i == label_index:
                        label = cell.strip()
                        if not label:
                            raise DatasetFileError(f"line {line} has no label in column {label_column!r}")
                        labels.append(label)
                        continue
                    values.append(_feature(cell, header[i], line))
                if len(values) * 4 > max_bytes:
                    raise _too_large("the .csv", len(values) * 4, max_bytes)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetFileError(f"not a readable UTF-8 .csv file: {exc}") from exc
    if not labels:
        raise DatasetFileError("the .csv has a header but no rows")
    x: FloatArray = np.frombuffer(values, dtype=np.float32).reshape(len(labels), len(header) - 1)
    check_finite(x, "x")
    y = np.array(labels)
    if all(_is_number(label) for label in set(labels)):
        # Numeric labels keep their numeric order (2 before 10); each distinct value is one class.
        names = sorted(set(labels), key=float)
        encoded, num_classes, class_names = encode_labels([("y", y)], names)
    else:
        encoded, num_classes, class_names = encode_labels([("y", y)], None)
    return ParsedDataset(x, encoded[0], None, None, num_classes, class_names)


def _feature(cell: str, column: str, line: int) -> float:
    text = cell.strip()
    if not text:
        raise DatasetFileError(f"column {column!r} is empty on line {line}; features must be numbers")
    try:
        value = float(text)
    except ValueError:
        raise DatasetFileError(
            f"column {column!r} is not numeric: line {line} has {text!r}; features must be numbers "
            f"(only the label column may hold text)"
        ) from None
    if not math.isfinite(value):
        raise DatasetFileError(f"column {column!r} is {text!r} on line {line}; features must be finite numbers")
    return value


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# --- .zip of images ---------------------------------------------------------------------------------------------


def parse_images(path: Path, size: tuple[int, int], color_mode: ColorMode, max_bytes: int) -> ParsedDataset:
    """Folders named after classes, holding PNG or JPEG images (``cats/1.png``, ``dogs/2.jpg``), as
    ``keras.utils.image_dataset_from_directory`` reads them: classes in sorted order, images resized
    (bilinear) to ``size`` (height, width), pixel values 0–255, shape (rows, height, width, channels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetFileError(f"not a valid .zip file: {exc}") from exc
    with zf:
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
                f"{loose!r} is not in a class folder; put each image in a folder named after its class"
            )
        class_names = sorted({parts[0] for parts, _ in entries})
        if len(class_names) < 2:
            raise DatasetFileError(
                f"the .zip has images in one class folder ({class_names[0]!r}); a classifier needs at least two"
            )
        height, width = size
        channels = CHANNELS[color_mode]
        decoded = len(entries) * height * width * channels * 4
        if decoded > max_bytes:
            raise _too_large(f"{len(entries):,} images of {height}×{width}×{channels}", decoded, max_bytes)
        entries.sort(key=lambda entry: entry[0])
        index = {name: i for i, name in enumerate(class_names)}
        x = np.empty((len(entries), height, width, channels), dtype=np.float32)
        y = np.empty(len(entries), dtype=np.int64)
        pil_mode = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}[color_mode]
        for i, (parts, info) in enumerate(entries):
            name = info.filename
            try:
                data = zf.read(info)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                raise DatasetFileError(f"the .zip is damaged: {name!r} cannot be read: {exc}") from exc
            try:
                with Image.open(io.BytesIO(data)) as image:
                    if image.format not in ("PNG", "JPEG"):
                        raise DatasetFileError(f"{name!r} is a {image.format} image; expected PNG or JPEG")
                    if image.width * image.height > MAX_IMAGE_PIXELS:
                        raise DatasetFileError(
                            f"{name!r} is {image.width}×{image.height} pixels, more than {MAX_IMAGE_PIXELS:,}"
                        )
                    image.draft(pil_mode, (width, height))  # JPEG: decode at a reduced scale when it can
                    resized = image.convert(pil_mode).resize((width, height), Image.Resampling.BILINEAR)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise DatasetFileError(f"{name!r} is not a readable PNG or JPEG image: {exc}") from exc
            x[i] = np.asarray(resized, dtype=np.float32).reshape(height, width, channels)
            y[i] = index[parts[0]]
    return ParsedDataset(x, y, None, None, len(class_names), class_names)
