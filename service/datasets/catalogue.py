"""The catalogue of datasets: each upload's record and its normalised ``<dataset_id>.npz`` in the dataset store,
and what the API can say of the built-in ones without loading them.

The file holds ``x_train`` (and ``x_test``), uint8 image pixels or bytes as uploaded and float32 otherwise, and
int64 class numbers ``y_train`` (and ``y_test``); the database row holds everything said about it (shapes, classes,
counts, statistics, the upload's sha256). The API writes it once, atomically; workers on any host read it from the
same directory, as they read the model store.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.datasets.builtin import (
    BUILTIN_DATASETS,
    SEQUENCE_DATASETS,
    DatasetInfo,
    Sequences,
    is_available_offline,
    load_builtin,
)
from service.datasets.files import IngestLimits, Kind, ParsedDataset, UploadOptions, parse, row_blocks
from service.db import DatasetRow, JobRow, JobStatus, is_id, new_id, session_scope
from service.settings import Settings
from service.spec import DatasetSpec
from service.store import Store, dataset_store

SPLITS = ("train", "test")


class UnknownDatasetError(Exception):
    """A training request names an uploaded dataset that does not exist; ``problems`` as in ``SpecError``."""

    def __init__(self, dataset_id: str) -> None:
        message = f"no uploaded dataset with id {dataset_id!r}; GET /datasets lists them"
        super().__init__(message)
        self.problems: list[tuple[tuple[str | int, ...], str]] = [(("dataset", "id"), message)]


def dataset_key(dataset_id: str) -> str:
    if not is_id(dataset_id):
        raise ValueError(f"not a dataset id: {dataset_id!r}")
    return f"{dataset_id}.npz"


def content_key(sha256: str, kind: Kind, options: UploadOptions) -> str:
    """The identity of an upload: its bytes and the options that shaped its arrays."""
    text = json.dumps({"sha256": sha256, "kind": kind, "options": options.for_kind(kind)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def ingest(
    *,
    settings: Settings,
    upload: Path,
    filename: str,
    name: str,
    kind: Kind,
    options: UploadOptions,
    sha256: str,
) -> tuple[DatasetRow, bool]:
    """The dataset of an uploaded file, and whether it is new: the same bytes read the same way are the dataset
    uploaded before. Raises ``DatasetFileError`` for a file that cannot be one; then nothing is left behind."""
    key = content_key(sha256, kind, options)
    with session_scope(settings.database_url) as session:
        existing = session.scalar(select(DatasetRow).where(DatasetRow.content_key == key))
        used = stored_bytes(session=session)
    if existing is not None:
        return existing, False

    parsed = parse(upload, kind, options, ingest_limits(settings, quota_left=settings.dataset_quota_bytes - used))
    store = dataset_store(settings)
    dataset_id = new_id()
    final = dataset_key(dataset_id)

    def write(f: BinaryIO) -> None:
        # Uncompressed, so that a few samples can be read without reading the whole file.
        if parsed.x_test is not None and parsed.y_test is not None:
            np.savez(f, x_train=parsed.x_train, y_train=parsed.y_train, x_test=parsed.x_test, y_test=parsed.y_test)
        else:
            np.savez(f, x_train=parsed.x_train, y_train=parsed.y_train)

    try:
        file_sha256, size = store.put_with(final, write)
        row = DatasetRow(
            id=dataset_id,
            name=name,
            kind=kind,
            filename=filename,
            sha256=sha256,
            content_key=key,
            options=options.for_kind(kind),
            x_shape=list(parsed.x_train.shape),
            y_shape=list(parsed.y_train.shape),
            num_classes=parsed.num_classes,
            class_names=parsed.class_names,
            class_counts=_class_counts(parsed),
            splits={
                "train": len(parsed.x_train),
                **({"test": len(parsed.x_test)} if parsed.x_test is not None else {}),
            },
            stats={**_stats(parsed.x_train), "dtype": str(parsed.x_train.dtype)},
            path=final,
            file_sha256=file_sha256,
            size_bytes=size,
            text=None if parsed.text is None else parsed.text.to_json(),
        )
        try:
            with session_scope(settings.database_url) as session:
                session.add(row)
        except IntegrityError:
            # The same upload finished first in another request: that one is the dataset.
            store.delete(final)
            with session_scope(settings.database_url) as session:
                existing = session.scalar(select(DatasetRow).where(DatasetRow.content_key == key))
            if existing is None:
                raise
            return existing, False
    except BaseException:
        store.delete(final)
        raise
    return row, True


def ingest_limits(settings: Settings, quota_left: int | None = None) -> IngestLimits:
    return IngestLimits(
        max_stored_bytes=settings.max_dataset_bytes,
        max_files=settings.max_dataset_files,
        max_image_pixels=settings.max_image_pixels,
        max_decoded_pixels=settings.max_decoded_pixels,
        max_label_length=settings.max_label_length,
        max_classes=settings.max_classes,
        max_csv_columns=settings.max_csv_columns,
        max_distinct_words=settings.max_distinct_words,
        seconds=settings.ingest_time_limit,
        quota_left=quota_left,
    )


def stored_bytes(*, session: Session) -> int:
    """What the stored datasets take together, as recorded."""
    return int(session.scalar(select(func.coalesce(func.sum(DatasetRow.size_bytes), 0))) or 0)


def _class_counts(parsed: ParsedDataset) -> list[int]:
    """Samples per class over every split."""
    counts = np.bincount(parsed.y_train, minlength=parsed.num_classes)
    if parsed.y_test is not None:
        counts = counts + np.bincount(parsed.y_test, minlength=parsed.num_classes)
    return [int(c) for c in counts]


def _stats(x: np.ndarray[Any, Any]) -> dict[str, float]:
    """Of the training inputs, in their own units (before any rescale a request applies)."""
    mean = float(x.mean(dtype=np.float64))
    squares = sum(float(np.square(block.astype(np.float64) - mean).sum()) for _, block in row_blocks(x))
    return {"min": float(x.min()), "max": float(x.max()), "mean": mean, "std": math.sqrt(squares / x.size)}


# --- records ----------------------------------------------------------------------------------------------------


def get_dataset(*, session: Session, dataset_id: str) -> DatasetRow | None:
    return session.get(DatasetRow, dataset_id)


def list_datasets(*, session: Session, limit: int, offset: int) -> tuple[Sequence[DatasetRow], int]:
    count = session.scalar(select(func.count()).select_from(DatasetRow)) or 0
    rows = session.scalars(
        select(DatasetRow).order_by(DatasetRow.created_at.desc(), DatasetRow.id.desc()).limit(limit).offset(offset)
    ).all()
    return rows, count


def count_datasets(*, session: Session) -> int:
    return session.scalar(select(func.count()).select_from(DatasetRow)) or 0


def jobs_using(*, session: Session, dataset_id: str) -> list[str]:
    """Queued and running jobs that train on this dataset."""
    active = session.scalars(select(JobRow).where(JobRow.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])))
    return [job.id for job in active if (job.spec.get("dataset") or {}).get("id") == dataset_id]


def delete_dataset(*, session: Session, row: DatasetRow, store: Store) -> None:
    """Forget the dataset, then remove its file (a reader that already opened it keeps reading)."""
    session.delete(row)
    session.commit()
    store.delete(row.path)


def info_of(row: DatasetRow) -> DatasetInfo:
    """What the dry build checks a model against, as for a built-in dataset."""
    return DatasetInfo(
        name=row.name,
        source="upload",
        input_shape=tuple(int(d) for d in row.x_shape[1:]),
        num_classes=row.num_classes,
        class_names=tuple(row.class_names) if row.class_names else None,
        description=f"uploaded from {row.filename!r}",
        rows=sum(int(count) for count in row.splits.values()),
        test_rows=int(row.splits.get("test", 0)),
        text=row.text,
        vocabulary_size=len(row.text["vocabulary"]) if row.text else None,
    )


def builtin_info(spec: DatasetSpec) -> tuple[DatasetInfo, Sequences | None]:
    """The built-in dataset the spec names, with its samples' shape; for a sequence dataset, the length its
    sequences are cut to decides that shape."""
    assert spec.name is not None
    info = BUILTIN_DATASETS[spec.name]
    if spec.name not in SEQUENCE_DATASETS or spec.maxlen is None:
        return info, None
    sequences = Sequences(spec.num_words, spec.maxlen, spec.padding, spec.truncating)
    # With num_words, load_data keeps the indexes below it (the others become 2, out of vocabulary).
    return dataclasses.replace(info, input_shape=(spec.maxlen,), vocabulary_size=spec.num_words), sequences


def as_requested(info: DatasetInfo, spec: DatasetSpec) -> DatasetInfo:
    """The dataset as the request's model sees it: its samples reshaped, word indexes as one-hot vectors, when it
    asks for them. A reshape that does not keep the number of values is left for the dry build to refuse."""
    if spec.reshape is not None and math.prod(spec.reshape) == math.prod(info.input_shape):
        info = dataclasses.replace(info, input_shape=tuple(spec.reshape), stored_shape=info.input_shape)
    if spec.one_hot and info.vocabulary_size is not None:
        info = dataclasses.replace(info, input_shape=(*info.input_shape, info.vocabulary_size))
    return info


def dataset_info(*, session: Session, spec: DatasetSpec) -> DatasetInfo:
    """The built-in dataset the spec names, or the uploaded one it gives the id of."""
    if spec.name is not None:
        return as_requested(builtin_info(spec)[0], spec)
    assert spec.id is not None  # DatasetSpec requires one of the two
    row = get_dataset(session=session, dataset_id=spec.id)
    if row is None:
        raise UnknownDatasetError(spec.id)
    return as_requested(info_of(row), spec)


# --- built-in datasets, described through the same endpoints ----------------------------------------------------

SAMPLE_ROWS = 100


@dataclass(frozen=True)
class BuiltinOverview:
    x_shape: list[int]
    y_shape: list[int]
    class_counts: list[int]
    splits: dict[str, int]
    stats: dict[str, float]
    # The first rows, for GET /datasets/{name}/samples.
    head_x: np.ndarray[Any, Any]
    head_y: np.ndarray[Any, Any]


@functools.lru_cache(maxsize=len(BUILTIN_DATASETS))
def builtin_overview(name: str) -> BuiltinOverview | None:
    """Shapes, counts, statistics and first rows of a scikit-learn dataset, which ships inside the package and
    loads in milliseconds. None for keras.datasets: the API leaves loading tens of megabytes to the workers."""
    info = BUILTIN_DATASETS[name]
    if info.source != "scikit-learn":
        return None
    data = load_builtin(info)
    counts = np.bincount(data.y_train, minlength=info.num_classes)
    return BuiltinOverview(
        x_shape=list(data.x_train.shape),
        y_shape=list(data.y_train.shape),
        class_counts=[int(c) for c in counts],
        splits={"train": len(data.x_train)},
        stats=_stats(data.x_train),
        head_x=data.x_train[:SAMPLE_ROWS].copy(),
        head_y=data.y_train[:SAMPLE_ROWS].copy(),
    )


# --- what a training request can name ---------------------------------------------------------------------------

# Uploads offered at most, newest first: a form's list, not the catalogue (GET /datasets pages through all of them).
MAX_UPLOAD_CHOICES = 500
# keras.datasets' images are stored as bytes.
PIXEL_RANGE = (0.0, 255.0)


@dataclass(frozen=True)
class DatasetChoice:
    """A dataset as a training request names it (``{"name": …}`` or ``{"id": …}``), with what a model built on it
    takes and gives."""

    reference: dict[str, str]
    info: DatasetInfo
    # Word-index sequences cut to the length each request gives (dataset.maxlen): their input shape is (maxlen,).
    sequences: bool
    # The inputs' smallest and largest values, where known without loading them, before a request's rescale.
    value_range: tuple[float, float] | None
    available_offline: bool


def _builtin_choice(info: DatasetInfo, keras_cache: Path | None) -> DatasetChoice:
    sequences = info.name in SEQUENCE_DATASETS
    value_range: tuple[float, float] | None = None
    overview = builtin_overview(info.name)
    if overview is not None:
        value_range = (overview.stats["min"], overview.stats["max"])
    elif not sequences:
        value_range = PIXEL_RANGE
    return DatasetChoice(
        reference={"name": info.name},
        info=info,
        sequences=sequences,
        value_range=value_range,
        available_offline=is_available_offline(info, keras_cache),
    )


def dataset_choices(
    *, session: Session, keras_cache: Path | None, limit: int = MAX_UPLOAD_CHOICES
) -> tuple[list[DatasetChoice], int]:
    """Every dataset a job can train on: the built-in ones, then the newest ``limit`` uploads; and how many uploads
    there are in all."""
    builtins = [_builtin_choice(info, keras_cache) for info in BUILTIN_DATASETS.values()]
    rows, count = list_datasets(session=session, limit=limit, offset=0)
    uploads = [
        DatasetChoice(
            reference={"id": row.id},
            info=info_of(row),
            sequences=False,
            value_range=(float(row.stats["min"]), float(row.stats["max"])),
            available_offline=True,
        )
        for row in rows
    ]
    return [*builtins, *uploads], count
