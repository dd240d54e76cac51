"""Numbers from a request as the float32 batch a model takes, checked against the model's input shape: the parts
the protocols share."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from service.serving.engine import ModelInfo
from service.serving.errors import InvalidInputError

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float32]
BodyBytes = bytes | bytearray | memoryview

# The header of a .npy file: its magic, its length and a dict of at most 64 KiB in format 1.0.
NPY_HEADER_PEEK = 12 + 65_536


def batch_from_json(values: Any, info: ModelInfo, what: str, loc: tuple[str | int, ...]) -> FloatArray:
    """Nested JSON numbers as a float32 batch of the model's input shape."""
    expected = [len(values) if isinstance(values, list) else 1, *info.input_shape]
    try:
        with np.errstate(over="ignore"):  # beyond float32's range is infinity, refused below
            x = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"{what} must be numbers in an array of shape {expected}: {exc}", loc) from exc
    if list(x.shape) != expected:
        raise InvalidInputError(f"{what} have shape {list(x.shape)}; this model expects {expected}", loc)
    return finite_batch(x, what, loc)


def batch_from_texts(values: list[Any], info: ModelInfo, what: str, loc: tuple[str | int, ...]) -> FloatArray | None:
    """Raw texts as the word indexes the model was trained on, for a model trained on a text dataset; None when
    the instances are not texts (they are then read as numbers)."""
    if info.text is None or not values or not isinstance(values[0], str):
        return None
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidInputError(
                f"{what} mix texts and other values: give every instance as a text, or every one as a sequence of "
                f"{info.text.maxlen} word indexes",
                (*loc, index),
            )
    indexes = info.text.encode_all(values)
    words = len(info.text.vocabulary)
    if info.input_shape == (info.text.maxlen,):
        return indexes.astype(np.float32)
    if info.input_shape == (info.text.maxlen, words):
        # Trained on one-hot vectors of the word indexes (dataset.one_hot).
        out = np.zeros((*indexes.shape, words), dtype=np.float32)
        np.put_along_axis(out, indexes[..., None].astype(np.int64), 1.0, axis=-1)
        return out
    raise InvalidInputError(
        f"this model takes inputs of shape {list(info.input_shape)}, not sequences of {info.text.maxlen} word "
        f"indexes: send them as numbers",
        loc,
    )


def batch_from_npy(body: BodyBytes, info: ModelInfo, check_count: Callable[[int], None]) -> FloatArray:
    """A ``.npy`` body (numbers, shape (n, *input_shape)) as a float32 batch, without copying float32 data."""
    loc = ("body",)
    stream = io.BytesIO(body[:NPY_HEADER_PEEK])
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # whatever numpy's header parser meets in a hand-made header: not a .npy array
        raise InvalidInputError(f"the body is not a .npy array: {str(exc)[:200]}", loc) from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InvalidInputError(f"the .npy array holds {dtype}; send numbers (float32 is used as is)", loc)
    expected = ["n", *info.input_shape]
    if (
        not all(type(d) is int for d in shape)
        or len(shape) != len(expected)
        or list(shape[1:]) != list(info.input_shape)
    ):
        raise InvalidInputError(f"the .npy array has shape {list(shape)[:8]}; this model expects {expected}", loc)
    if shape[0] == 0:
        raise InvalidInputError("the .npy array holds no instances; send at least one", loc)
    check_count(int(shape[0]))
    count = int(np.prod(shape))
    offset = stream.tell()
    if len(body) - offset != count * dtype.itemsize:
        raise InvalidInputError(
            f"the .npy body holds {len(body) - offset} bytes of data; shape {list(shape)} needs "
            f"{count * dtype.itemsize}",
            loc,
        )
    x = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    x = x.reshape(shape[::-1]).transpose() if fortran_order else x.reshape(shape)
    return finite_batch(np.ascontiguousarray(x, dtype=np.float32), "instances", ())


def finite_batch(x: FloatArray, what: str, loc: tuple[str | int, ...]) -> FloatArray:
    """``x`` if every value is a finite number; else InvalidInputError naming the first instance that is not."""
    # A sum of squares is finite only if every value is (or it overflowed, which min and max then tell apart): one
    # pass (BLAS' dot product, faster than a sum), and no mask the size of the batch.
    flat = x.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):  # what the sum meets is refused below, not warned of
        total = float(np.dot(flat, flat))
    if not math.isfinite(total) and not (np.isfinite(x.min()) and np.isfinite(x.max())):
        bad = int(np.argwhere(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0][0])
        raise InvalidInputError(f"{what} must be finite numbers (no NaN or Infinity)", (*loc, bad) if loc else ())
    return x


def classes_of(outputs: FloatArray) -> Array:
    if outputs.shape[-1] == 1:  # one sigmoid unit: class 1 when p ≥ 0.5
        result: Array = (outputs[:, 0] >= 0.5).astype(np.int64)
        return result
    classes: Array = outputs.argmax(axis=-1)
    return classes
