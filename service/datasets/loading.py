"""A dataset as a job trains on it, and a few stored rows as the API shows them: read from the dataset store,
checked against what was recorded at upload."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from service.datasets.builtin import DatasetInfo, DatasetUnavailableError, LoadedDataset, load_builtin
from service.datasets.catalogue import as_requested, builtin_info, get_dataset, info_of
from service.db import DatasetRow, session_scope
from service.settings import Settings
from service.spec import DatasetSpec
from service.store import Store, StoreError, dataset_store


def load_training_data(spec: DatasetSpec, settings: Settings) -> tuple[DatasetInfo, LoadedDataset]:
    """The dataset a job trains on, whole, with what is known about it. Used by the worker."""
    if spec.name is not None:
        info, sequences = builtin_info(spec)
        return as_requested(info, spec), load_builtin(info, sequences)
    assert spec.id is not None
    with session_scope(settings.database_url) as session:
        row = get_dataset(session=session, dataset_id=spec.id)
    if row is None:
        raise DatasetUnavailableError(f"uploaded dataset {spec.id} no longer exists (it was deleted)")
    try:
        path = dataset_store(settings).local(row.path, row.file_sha256, f"file of dataset {row.id}")
    except StoreError as exc:
        raise DatasetUnavailableError(str(exc)) from exc
    with np.load(path, allow_pickle=False) as npz:
        has_test = "x_test" in npz.files
        data = LoadedDataset(
            npz["x_train"], npz["y_train"], npz["x_test"] if has_test else None, npz["y_test"] if has_test else None
        )
    return as_requested(info_of(row), spec), data


def stored_split(row: DatasetRow, store: Store, split: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """One split's inputs and labels, memory-mapped: reading a few rows of a local file reads only those rows."""
    path = store.local(row.path, row.file_sha256, f"file of dataset {row.id}", verify=False)
    return _npz_member(path, f"x_{split}"), _npz_member(path, f"y_{split}")


def _npz_member(path: Path, name: str) -> np.ndarray[Any, Any]:
    """An array of an uncompressed .npz (as ``np.savez`` writes), memory-mapped in place."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path, allow_pickle=False) as npz:
            loaded: np.ndarray[Any, Any] = npz[name]
            return loaded
    with path.open("rb") as f:
        f.seek(info.header_offset)
        local_header = f.read(30)  # the local file header: its name and extra field precede the data
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{name} in {path} holds Python objects")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")
