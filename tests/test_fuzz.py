"""Every parser of untrusted bytes, fed generated and mutated input with Hypothesis: each input is accepted (as
something that holds together) or refused with a 4xx-kind error and a short message, within a time and a memory
bound (tests/fuzz_targets.py). Inputs start as valid files of each kind (.npz, .npy, .csv, image .zip, multipart
forms, JSON predict bodies, TF Serving and Open Inference bodies with the binary extension, training requests)
and are then mutated at the byte level or at the level of their structure.

`pytest tests/test_fuzz.py --long-fuzz` runs 10,000 examples per parser instead of 300; tests/fuzz_atheris.py
runs the binary parsers under a coverage-guided fuzzer.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.datasets.files import UploadOptions
from service.examples import chapter_examples
from service.serving.engine import Engine
from service.settings import Settings
from tests import fuzz_targets

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return fuzz_targets.engine_for_fuzzing(tmp_path_factory.mktemp("fuzz-engine"))


# --- mutations ----------------------------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` as it was, or damaged the ways files are: bytes flipped, cut short, inserted, repeated, or a number
    in it made huge (shapes, lengths and offsets are numbers)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "repeat", "number", "splice"]))
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            end = min(len(out), at + draw(st.integers(1, 64)))
            out[at:at] = out[at:end] * draw(st.integers(1, 4))
        elif kind == "number":
            digits = [i for i, b in enumerate(out) if 48 <= b <= 57]
            if digits:
                place = draw(st.sampled_from(digits))
                out[place : place + 1] = str(draw(st.sampled_from([0, 2**31, 2**45, 10**30, -1]))).encode()
        else:
            value = draw(st.integers(0, 2**32 - 1))
            out[at : at + 4] = struct.pack("<I", value)[: len(out) - at]
    return bytes(out)


# --- .npz ---------------------------------------------------------------------------------------------------------


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    rows = draw(st.integers(1, 12))
    sample = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    dtype = draw(st.sampled_from(["u1", "i2", "i4", "f4", "f8", "?"]))
    x = np.asarray(np.random.default_rng(draw(st.integers(0, 99))).integers(0, 200, (rows, *sample)), dtype=dtype)
    classes = draw(st.integers(1, 4))
    labels = draw(st.sampled_from(["int", "float", "text", "one_hot", "column"]))
    y: np.ndarray[Any, Any] = np.arange(rows) % classes
    if labels == "float":
        y = y.astype(np.float64)
    elif labels == "text":
        y = np.array([f"class {v}" for v in y])
    elif labels == "one_hot":
        y = np.eye(classes)[y]
    elif labels == "column":
        y = y.reshape(-1, 1)
    arrays: dict[str, Any] = {"x": x, "y": y}
    if draw(st.booleans()):
        arrays = {"x_train": x, "y_train": y, "x_test": x[: max(1, rows // 2)], "y_test": y[: max(1, rows // 2)]}
    if draw(st.booleans()) and labels != "text":
        arrays["class_names"] = np.array([f"n{i}" for i in range(max(classes, 2))])
    if draw(st.booleans()):
        arrays["x" if "x" in arrays else "x_train"] = np.asfortranarray(x)
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **arrays)
    return buffer.getvalue()


@FUZZ
@given(data=npz_files().flatmap(mutated))
def test_npz_uploads(data: bytes) -> None:
    fuzz_targets.dataset_file("npz", data)


# --- .csv ---------------------------------------------------------------------------------------------------------

CELLS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet="ab ,\"'\n\r\t\x00é1e-+.", max_size=8),
    st.just(""),
    st.just("1" * 50),
)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    columns = draw(st.integers(1, 6))
    header = [draw(st.sampled_from(["label", "x", "y", "z", " label ", "é", ""])) for _ in range(columns)]
    lines = [",".join(header)]
    for _ in range(draw(st.integers(0, 12))):
        lines.append(",".join(draw(CELLS) for _ in range(draw(st.integers(columns - 1, columns + 1)))))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return (newline.join(lines) + newline).encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1"])), "replace")


@FUZZ
@given(data=csv_files().flatmap(mutated), label=st.sampled_from(["label", "x", "missing"]))
def test_csv_uploads(data: bytes, label: str) -> None:
    fuzz_targets.dataset_file("csv", data, UploadOptions(label_column=label))


# --- .zip of images -----------------------------------------------------------------------------------------------


def _image(side: int, mode: str, fmt: str, seed: int) -> bytes:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def image_zips(draw: st.DrawFn) -> bytes:
    buffer = io.BytesIO()
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for i in range(draw(st.integers(0, 6))):
            folder = draw(st.sampled_from(["cat/", "dog/", "", "a/b/", ".hidden/", "__MACOSX/"]))
            fmt, suffix = draw(st.sampled_from([("PNG", "png"), ("JPEG", "jpg"), ("GIF", "png"), ("BMP", "jpeg")]))
            mode = "RGB" if fmt in ("JPEG", "BMP") else draw(st.sampled_from(["L", "RGB", "RGBA"]))
            zf.writestr(f"{folder}{i}.{suffix}", _image(draw(st.integers(1, 9)), mode, fmt, i))
    return buffer.getvalue()


@FUZZ
@given(
    data=image_zips().flatmap(mutated),
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    mode=st.sampled_from(["grayscale", "rgb", "rgba"]),
)
def test_image_zip_uploads(data: bytes, size: tuple[int, int], mode: Any) -> None:
    fuzz_targets.dataset_file("images", data, UploadOptions(image_size=size, color_mode=mode))


# --- prediction bodies --------------------------------------------------------------------------------------------


@st.composite
def npy_bodies(draw: st.DrawFn) -> bytes:
    rows = draw(st.integers(0, 5))
    shape = draw(st.sampled_from([(rows, 8, 8), (rows, 64), (rows, 8, 8, 1), (), (rows,)]))
    dtype = draw(st.sampled_from(["<f4", ">f4", "<f8", "u1", "i8", "?", "<c8", "U3", "V4"]))
    values = np.zeros(shape, dtype=dtype)
    if draw(st.booleans()) and values.dtype.kind == "f" and values.size:
        values.flat[0] = draw(st.sampled_from([np.nan, np.inf, 1e30]))
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asfortranarray(values) if draw(st.booleans()) else values)
    return buffer.getvalue()


@FUZZ
@given(data=npy_bodies().flatmap(mutated))
def test_npy_predict_bodies(data: bytes, engine: Engine) -> None:
    fuzz_targets.npy_body(data, engine)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=80,
)
NUMBER_GRIDS = st.lists(
    st.lists(st.lists(st.one_of(st.integers(0, 16), st.floats()), min_size=8, max_size=8), min_size=8, max_size=8),
    min_size=0,
    max_size=3,
)


def _json(value: Any) -> bytes:
    """JSON text as a careless client writes it: integers of any size, NaN and Infinity included."""
    return json.dumps(value).encode()


@FUZZ
@given(
    body=st.one_of(
        st.fixed_dictionaries({"model_id": st.text(max_size=3), "instances": NUMBER_GRIDS | JSON}),
        st.fixed_dictionaries({"model": JSON, "instances": JSON, "extra": JSON}),
        JSON,
    )
    .map(_json)
    .flatmap(mutated)
)
def test_json_predict_bodies(body: bytes, engine: Engine) -> None:
    fuzz_targets.json_predict_body(body, engine)


@FUZZ
@given(
    body=st.one_of(
        st.fixed_dictionaries({"instances": NUMBER_GRIDS | st.lists(st.fixed_dictionaries({"input": NUMBER_GRIDS}))}),
        st.fixed_dictionaries({"inputs": NUMBER_GRIDS | st.fixed_dictionaries({"input": NUMBER_GRIDS}) | JSON}),
        st.fixed_dictionaries({"instances": JSON, "inputs": JSON}),
        JSON,
    )
    .map(_json)
    .flatmap(mutated)
)
def test_tf_serving_bodies(body: bytes, engine: Engine) -> None:
    fuzz_targets.tf_serving_body(body, engine)


@st.composite
def inference_requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    rows = draw(st.integers(0, 3))
    shape = draw(st.sampled_from([[rows, 8, 8], [rows, 64], [True, 8, 8], [rows, 8, -8], "x", [2**40, 8, 8]]))
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "other"])),
        "shape": shape,
        "datatype": draw(st.sampled_from(["FP32", "FP64", "INT8", 3])),
    }
    binary = b""
    if draw(st.booleans()):
        size = draw(st.sampled_from([rows * 256, 0, -4, 2**40, True]))
        tensor["parameters"] = {"binary_data_size": size}
        binary = np.zeros(max(0, rows * 64), "<f4").tobytes()
    else:
        tensor["data"] = draw(st.lists(st.floats() | st.integers(), max_size=rows * 64) | JSON)
    request: dict[str, Any] = {"inputs": draw(st.sampled_from([[tensor], [tensor, tensor], [], tensor]))}
    if draw(st.booleans()):
        request["outputs"] = draw(
            st.sampled_from([[{"name": "output", "parameters": {"binary_data": True}}], [{"name": 1}], "x", [3]])
        )
    header = _json(request)
    if draw(st.booleans()):
        return header + binary, str(len(header))
    return header, draw(st.sampled_from([None, "²", "-1", "99999999999"]))


@FUZZ
@given(request=inference_requests(), damage=st.integers(0, 2**32 - 1))
def test_open_inference_bodies(request: tuple[bytes, str | None], damage: int, engine: Engine) -> None:
    data, header_length = request
    if damage % 3 == 0 and data:  # damage the body, keeping the declared header length
        data = data[: damage % len(data)] + bytes([damage % 256]) + data[damage % len(data) + 1 :]
    fuzz_targets.open_inference_body(data, header_length, engine)


# --- training requests --------------------------------------------------------------------------------------------

SPECS = [body for key, body in chapter_examples().items() if key.startswith("digits")]


@st.composite
def edited_specs(draw: st.DrawFn) -> bytes:
    """A chapter example with a few of its values replaced, keys removed or added, at any depth."""
    spec = orjson.loads(orjson.dumps(draw(st.sampled_from(SPECS))))
    for _ in range(draw(st.integers(1, 4))):
        node: Any = spec
        path: list[Any] = []
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
            path.append(key)
            node = node[key]
        if not path:
            continue
        parent: Any = spec
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON | st.integers(-(2**64), 2**64) | st.sampled_from([0, 1, 65_536, 10**9]))
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(JSON)
        elif isinstance(parent, list):
            parent.insert(path[-1], draw(JSON))
    return _json(spec)


@FUZZ
@given(data=edited_specs().flatmap(mutated))
def test_training_requests(data: bytes) -> None:
    fuzz_targets.train_spec(data)


# --- multipart forms, through the HTTP app ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uploads_api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[TestClient]:
    from service.api.app import create_app

    app = create_app(Settings(home=tmp_path_factory.mktemp("fuzz-uploads"), redis_url=redis_url, queue="fuzz-none"))
    with TestClient(app) as client:
        yield client


@st.composite
def multipart_forms(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b0undary", "x", "-" * 70, "é", ""]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["file", "name", "label_column", "image_size", "color_mode", "other", ""]))
        filename = draw(st.sampled_from([None, "a.csv", "b.npz", "c.zip", "d.txt", "x" * 300, "a\x00.csv", ""]))
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        value = draw(st.sampled_from([b"x,label\n1,a\n2,b\n", b"64,64", b"rgb", b"\xff\xfe", b""]))
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    return draw(mutated(body)), f"multipart/form-data; boundary={boundary}"


@FUZZ
@given(form=multipart_forms())
def test_multipart_uploads(form: tuple[bytes, str], uploads_api: TestClient) -> None:
    body, content_type = form
    response = uploads_api.post("/datasets", content=body, headers={"Content-Type": content_type.encode()})
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert len(response.content) < 8192
        assert response.json()["error"]["message"]


def test_fuzzing_runs_against_real_inputs(tmp_path: Path, engine: Engine) -> None:
    """The harness itself: a valid file of each kind is accepted, so the fuzz tests above can tell the two apart."""
    from tests.datafiles import csv_bytes, images_zip, npz_bytes

    assert fuzz_targets.dataset_file("npz", npz_bytes(x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))) is not None
    assert fuzz_targets.dataset_file("csv", csv_bytes(["a", "label"], [(1, "x"), (2, "y")])) is not None
    assert fuzz_targets.dataset_file("images", images_zip(per_class=2, size=4)) is not None
