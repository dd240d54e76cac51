"""Uploading, inspecting and deleting datasets over HTTP, with real files; every bad file is refused with a reason
and leaves nothing behind. (Training on uploads is in test_datasets_training.py.)"""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits

from service.settings import Settings
from tests.datafiles import blobs, csv_bytes, images_zip, npz_bytes, png_bytes, stored_files, upload


@pytest.fixture(scope="module")
def api(settings: Settings) -> Iterator[TestClient]:
    """The HTTP app alone: uploads and dry builds need no worker."""
    from service.api.app import create_app

    with TestClient(create_app(settings)) as client:
        yield client


def test_npz_upload_is_described_and_sampled(api: TestClient, settings: Settings) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(30, 4, 5), dtype=np.uint8)
    y = np.arange(30) % 3
    status, body = upload(api, "grids.npz", npz_bytes(x=x, y=y, class_names=np.array(["a", "b", "c"])))
    assert status == 201, body
    assert body["name"] == "grids"
    assert body["source"] == "upload"
    assert body["kind"] == "npz"
    assert body["x_shape"] == [30, 4, 5]
    assert body["y_shape"] == [30]
    assert body["input_shape"] == [4, 5]
    assert body["dtype"] == "uint8", "bytes stay bytes: a quarter of float32's room"
    assert body["num_classes"] == 3
    assert body["class_names"] == ["a", "b", "c"]
    assert body["class_counts"] == [10, 10, 10]
    assert body["splits"] == {"train": 30}
    assert len(body["sha256"]) == 64
    assert body["stats"]["min"] == float(x.min())
    assert body["stats"]["max"] == float(x.max())
    assert body["stats"]["mean"] == pytest.approx(float(x.mean()))
    assert body["available_offline"] is True

    detail = api.get(f"/datasets/{body['dataset_id']}")
    assert detail.status_code == 200
    assert detail.json() == body

    samples = api.get(f"/datasets/{body['dataset_id']}/samples", params={"n": 3}).json()
    assert samples["rows"] == 30
    assert [s["index"] for s in samples["samples"]] == [0, 1, 2]
    assert [s["x"] for s in samples["samples"]] == x[:3].astype(float).tolist()
    assert [s["y"] for s in samples["samples"]] == [0, 1, 2]
    assert [s["label"] for s in samples["samples"]] == ["a", "b", "c"]
    assert samples["samples"][0]["image"] is None
    assert f"{body['dataset_id']}.npz" in stored_files(Path(settings.dataset_store))


def test_the_same_bytes_are_the_same_dataset(api: TestClient, settings: Settings) -> None:
    x, y = blobs(24, seed=7)
    content = npz_bytes(x=x, y=y)
    status, first = upload(api, "blobs.npz", content)
    assert status == 201
    count = api.get("/datasets").json()["count"]
    files = stored_files(Path(settings.dataset_store))

    status, again = upload(api, "renamed.npz", content, name="another name")
    assert status == 200
    assert again["dataset_id"] == first["dataset_id"]
    assert again["sha256"] == first["sha256"]
    assert again["name"] == "blobs"
    assert api.get("/datasets").json()["count"] == count
    assert stored_files(Path(settings.dataset_store)) == files


def test_npz_with_a_test_split_and_one_hot_labels(api: TestClient) -> None:
    x, y = blobs(40, features=3, classes=2, seed=2)
    one_hot = np.eye(2)[y]
    status, body = upload(
        api, "split.npz", npz_bytes(x_train=x[:30], y_train=one_hot[:30], x_test=x[30:], y_test=y[30:])
    )
    assert status == 201, body
    assert body["splits"] == {"train": 30, "test": 10}
    assert body["x_shape"] == [30, 3]
    assert body["num_classes"] == 2
    assert body["class_names"] is None
    assert body["class_counts"] == [20, 20]
    test = api.get(f"/datasets/{body['dataset_id']}/samples", params={"split": "test", "n": 2}).json()
    assert [s["y"] for s in test["samples"]] == y[30:32].tolist()
    assert test["samples"][0]["x"] == pytest.approx(x[30].tolist())


def test_csv_with_a_text_label_column(api: TestClient) -> None:
    rows = [(5.1, 3.5, "setosa"), (7.0, 3.2, "versicolor"), (6.3, 3.3, "virginica"), (4.9, 3.0, "setosa")]
    content = csv_bytes(["sepal length", "sepal width", "species"], rows)
    status, body = upload(api, "flowers.csv", content, label_column="species", name="my flowers")
    assert status == 201, body
    assert body["name"] == "my flowers"
    assert body["kind"] == "csv"
    assert body["x_shape"] == [4, 2]
    assert body["class_names"] == ["setosa", "versicolor", "virginica"]
    assert body["class_counts"] == [2, 1, 1]
    assert body["options"] == {"label_column": "species"}
    samples = api.get(f"/datasets/{body['dataset_id']}/samples", params={"n": 2}).json()["samples"]
    assert samples[1]["x"] == pytest.approx([7.0, 3.2])
    assert samples[1]["label"] == "versicolor"


def test_csv_numeric_labels_keep_their_numeric_order(api: TestClient) -> None:
    content = csv_bytes(["a", "label"], [(1, 10), (2, 2), (3, 10), (4, 1)])
    status, body = upload(api, "numbers.csv", content)
    assert status == 201, body
    assert body["class_names"] == ["1", "2", "10"]
    assert body["class_counts"] == [1, 1, 2]


def test_zip_of_class_folders_becomes_image_arrays(api: TestClient) -> None:
    content = images_zip(per_class=4, size=10, prefix="colours/")  # zipped with its enclosing folder
    status, body = upload(api, "colours.zip", content, image_size="6,8", color_mode="grayscale")
    assert status == 201, body
    assert body["kind"] == "images"
    assert body["x_shape"] == [12, 6, 8, 1]
    assert body["class_names"] == ["blue", "green", "red"]
    assert body["class_counts"] == [4, 4, 4]
    assert body["options"] == {"image_size": [6, 8], "color_mode": "grayscale"}
    assert 0 <= body["stats"]["min"] <= body["stats"]["max"] <= 255

    samples = api.get(f"/datasets/{body['dataset_id']}/samples", params={"n": 5}).json()["samples"]
    assert [s["label"] for s in samples] == ["blue"] * 4 + ["green"]
    first = samples[0]
    assert np.array(first["x"]).shape == (6, 8, 1)
    assert first["image"].startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(first["image"].split(",", 1)[1])))
    assert png.size == (8, 6)
    assert np.array_equal(np.asarray(png), np.rint(np.array(first["x"])[..., 0]).astype(np.uint8))

    # The same bytes read at another size are another dataset.
    status, other = upload(api, "colours.zip", content, image_size="4")
    assert status == 201
    assert other["dataset_id"] != body["dataset_id"]
    assert other["x_shape"] == [12, 4, 4, 3]


def test_built_in_datasets_list_themselves(api: TestClient) -> None:
    listing = api.get("/datasets", params={"limit": 500}).json()
    names = [d["dataset_id"] for d in listing["data"]]
    assert names[:8] == ["digits", "iris", "wine", "breast_cancer", "mnist", "fashion_mnist", "cifar10", "imdb"]
    assert listing["count"] == len(listing["data"])
    builtin = {d["dataset_id"]: d for d in listing["data"][:8]}
    assert builtin["digits"]["source"] == "scikit-learn"
    assert builtin["digits"]["available_offline"] is True
    # The tests' Keras cache holds a small fashion_mnist and nothing else.
    assert builtin["fashion_mnist"]["available_offline"] is True
    assert builtin["mnist"]["available_offline"] is False
    assert builtin["cifar10"]["input_shape"] == [32, 32, 3]
    assert builtin["imdb"]["input_shape"] == []  # (maxlen,): each request says how long its reviews are
    assert builtin["imdb"]["available_offline"] is False
    assert all(d["source"] == "upload" for d in listing["data"][8:])

    page = api.get("/datasets", params={"limit": 2, "offset": 7}).json()
    assert [d["dataset_id"] for d in page["data"]] == ["imdb", names[8]]
    assert page["count"] == listing["count"]

    digits = api.get("/datasets/digits").json()
    assert digits["x_shape"] == [1797, 8, 8]
    assert digits["stats"]["max"] == 16.0
    assert sum(digits["class_counts"]) == 1797
    first = api.get("/datasets/digits/samples", params={"n": 1}).json()["samples"][0]
    assert first["x"] == load_digits().images[0].tolist()
    assert first["y"] == 0

    fashion = api.get("/datasets/fashion_mnist").json()
    assert fashion["class_names"][3] == "Dress"
    assert fashion["stats"] is None  # keras.datasets are loaded by workers only
    refused = api.get("/datasets/fashion_mnist/samples")
    assert refused.status_code == 409
    assert "only workers load" in refused.json()["error"]["message"]


def test_unknown_and_built_in_datasets_cannot_be_deleted(api: TestClient) -> None:
    missing = api.delete("/datasets/" + "0" * 32)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == f"no dataset with id {'0' * 32!r}"
    builtin = api.delete("/datasets/digits")
    assert builtin.status_code == 409
    assert builtin.json()["error"]["message"] == "'digits' is a built-in dataset; only uploads can be deleted"


def test_delete_removes_the_record_and_the_file(api: TestClient, settings: Settings) -> None:
    x, y = blobs(12, seed=11)
    status, body = upload(api, "short-lived.npz", npz_bytes(x=x, y=y))
    assert status == 201
    assert api.delete(f"/datasets/{body['dataset_id']}").status_code == 204
    assert api.get(f"/datasets/{body['dataset_id']}").status_code == 404
    assert f"{body['dataset_id']}.npz" not in stored_files(Path(settings.dataset_store))


# --- bad files ----------------------------------------------------------------------------------------------------


def _damaged_zip() -> bytes:
    content = bytearray(images_zip(per_class=2, size=8))
    start = content.index(b"IDAT") + 8  # inside the first PNG's pixel data, stored uncompressed in the zip
    content[start : start + 4] = b"\xff\xff\xff\xff"
    return bytes(content)


def _pickled_npz() -> bytes:
    return npz_bytes(x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))


def _loose_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("photo.png", png_bytes(np.zeros((4, 4, 3))))
        zf.writestr("red/1.png", png_bytes(np.zeros((4, 4, 3))))
    return buffer.getvalue()


def _nan_npz() -> bytes:
    x, y = blobs(10)
    x[3, 2] = np.nan
    return npz_bytes(x=x, y=y)


BAD_FILES: list[tuple[str, str, bytes, dict[str, str], int, str, str]] = [
    (
        "corrupt zip",
        "pictures.zip",
        b"PK\x03\x04 this is not really a zip file",
        {},
        422,
        "file",
        "not a valid .zip file: File is not a zip file",
    ),
    (
        "damaged image in a zip",
        "pictures.zip",
        _damaged_zip(),
        {},
        422,
        "file",
        "the .zip is damaged: 'blue/000.png' cannot be read: Bad CRC-32 for file 'blue/000.png'",
    ),
    (
        "npz without x and y",
        "arrays.npz",
        npz_bytes(X=np.zeros((4, 2)), Y=np.zeros(4)),
        {},
        422,
        "file",
        "the .npz has no 'x' and 'y' arrays (found: 'X', 'Y'); expected 'x' and 'y', or 'x_train' and 'y_train' "
        "with optional 'x_test' and 'y_test'",
    ),
    (
        "x and y of different lengths",
        "arrays.npz",
        npz_bytes(x=np.zeros((10, 2)), y=np.arange(9) % 2),
        {},
        422,
        "file",
        "x has 10 rows but y has 9; they must match",
    ),
    (
        "NaN in x",
        "arrays.npz",
        _nan_npz(),
        {},
        422,
        "file",
        "x holds NaN or infinite values (first in row 3); fill or drop them before uploading",
    ),
    (
        "pickle inside an npz",
        "arrays.npz",
        _pickled_npz(),
        {},
        422,
        "file",
        "array 'x' holds Python objects, which only pickle can load, and pickles are not accepted; "
        "save numbers (or, for labels, strings)",
    ),
    (
        "not an npz at all",
        "arrays.npz",
        b"\x93NUMPY but truncated",
        {},
        422,
        "file",
        "not a valid .npz file (a zip of .npy arrays): File is not a zip file",
    ),
    (
        "fractional labels",
        "arrays.npz",
        npz_bytes(x=np.zeros((4, 2)), y=np.array([0.0, 1.0, 0.5, 1.0])),
        {},
        422,
        "file",
        "y holds non-integer labels (row 2 is 0.5); labels must be class numbers 0..k-1 or class names",
    ),
    (
        "non-numeric CSV feature",
        "cars.csv",
        csv_bytes(["weight", "colour", "label"], [(1.5, 3, "fast"), (2.0, "red", "slow")]),
        {},
        422,
        "file",
        "column 'colour' is not numeric: line 3 has 'red'; features must be numbers (only the label column may "
        "hold text)",
    ),
    (
        "CSV without the label column",
        "cars.csv",
        csv_bytes(["weight", "kind"], [(1.5, "fast"), (2.0, "slow")]),
        {},
        422,
        "label_column",
        "no column 'label' in the header (columns: 'weight', 'kind'); name the label column with the "
        "label_column field",
    ),
    (
        "CSV row with too few fields",
        "cars.csv",
        b"weight,label\n1.5,fast\n2.0\n",
        {},
        422,
        "file",
        "line 3 has 1 fields; the header has 2",
    ),
    (
        "image folder with one class",
        "cats.zip",
        images_zip(per_class=3, classes=["blue"]),
        {},
        422,
        "file",
        "the .zip has images in one class folder ('blue'); a classifier needs at least two",
    ),
    (
        "images outside class folders",
        "loose.zip",
        _loose_zip(),
        {},
        422,
        "file",
        "'photo.png' is not in a class folder; put each image in a folder named after its class",
    ),
    (
        "one class in an npz",
        "arrays.npz",
        npz_bytes(x=np.zeros((4, 2)), y=np.zeros(4, dtype=int)),
        {},
        422,
        "file",
        "y has one class (0); a classifier needs at least two",
    ),
]


@pytest.mark.parametrize(
    ("filename", "content", "fields", "status", "field", "message"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_files_are_refused_with_a_reason(
    api: TestClient,
    settings: Settings,
    filename: str,
    content: bytes,
    fields: dict[str, str],
    status: int,
    field: str,
    message: str,
) -> None:
    count = api.get("/datasets").json()["count"]
    files = stored_files(Path(settings.dataset_store))
    got, body = upload(api, filename, content, **fields)
    assert got == status, body
    assert body["error"]["type"] == "invalid_dataset"
    assert body["error"]["message"] == f"{filename}: {message}"
    assert body["error"]["errors"] == [{"path": field, "loc": [field], "message": message}]
    # Nothing half-written stays behind: no record, no stored file, no partial upload.
    assert api.get("/datasets").json()["count"] == count
    assert stored_files(Path(settings.dataset_store)) == files


def test_unsupported_file_types_are_refused_before_reading_them(api: TestClient) -> None:
    status, body = upload(api, "notes.txt", b"hello")
    assert status == 415
    assert body["error"]["message"] == "cannot read 'notes.txt': expected a .npz, .csv, .zip file"


def test_form_mistakes_name_their_field(api: TestClient) -> None:
    response = api.post("/datasets", data={"name": "nothing attached"}, files={"other": ("a.csv", b"a,label")})
    assert response.status_code == 422
    assert response.json()["error"]["errors"][0]["path"] == "other"

    response = api.post("/datasets", data={"name": "no file"}, files={"name2": ("", b"")})
    assert response.status_code == 422

    response = api.post("/datasets", json={"file": "data.npz"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["error"]["message"]

    content = images_zip(per_class=1)
    status, body = upload(api, "c.zip", content, image_size="big", color_mode="cmyk")
    assert status == 422
    assert body["error"]["errors"] == [
        {
            "path": "image_size",
            "loc": ["image_size"],
            "message": "expected height,width from 1 to 1024 (e.g. 28,28); got 'big'",
        },
        {"path": "color_mode", "loc": ["color_mode"], "message": "expected one of grayscale, rgb, rgba; got 'cmyk'"},
    ]


def test_uploads_over_the_limit_are_refused_early_and_while_streaming(settings: Settings) -> None:
    from service.api.app import create_app

    small = settings.model_copy(update={"max_upload_bytes": 1000})
    before = stored_files(Path(settings.dataset_store))
    with TestClient(create_app(small)) as client:
        # Content-Length says it all: refused before the body is read.
        status, body = upload(client, "big.csv", b"a,label\n" + b"1,x\n" * 100_000)
        assert status == 413
        assert body["error"]["message"] == (
            "the file is larger than the upload limit of 1,000 bytes (TRAINSERVE_MAX_UPLOAD_BYTES)"
        )

        # No Content-Length (chunked): refused once the file passes the limit.
        boundary = "b0undary"

        def chunked() -> Iterator[bytes]:
            yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n').encode()
            yield b"a,label\n"
            for _ in range(1000):
                yield b"1,x\n" * 10

        response = client.post(
            "/datasets",
            content=chunked(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "payload_too_large"
    assert stored_files(Path(settings.dataset_store)) == before


# --- training requests that name an uploaded dataset --------------------------------------------------------------


def _model_request(dataset: dict[str, Any], input_shape: list[int], units: int) -> dict[str, Any]:
    return {
        "model": {
            "input_shape": input_shape,
            "layers": [{"type": "flatten"}, {"type": "dense", "units": units, "activation": "softmax"}],
        },
        "compile": {"optimizer": "adam"},
        "dataset": dataset,
        "fit": {"epochs": 1},
    }


def test_train_requests_name_a_dataset_by_name_or_id(api: TestClient) -> None:
    for dataset, given in (({"name": "digits", "id": "0" * 32}, "both"), ({"rescale": 0.5}, "neither")):
        response = api.post("/train", json=_model_request(dataset, [8, 8], 10))
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["errors"] == [
            {
                "path": "dataset",
                "loc": ["dataset"],
                "message": f"give the dataset's name (a built-in) or its id (an upload), not {given}",
            }
        ]

    response = api.post("/train", json=_model_request({"id": "f" * 32}, [8, 8], 10))
    assert response.status_code == 422
    assert response.json()["error"]["errors"] == [
        {
            "path": "dataset.id",
            "loc": ["dataset", "id"],
            "message": f"no uploaded dataset with id {'f' * 32!r}; GET /datasets lists them",
        }
    ]


def test_dry_build_checks_the_model_against_the_uploaded_dataset(api: TestClient) -> None:
    x, y = blobs(30, features=5, classes=3, seed=3)
    status, body = upload(api, "five features.npz", npz_bytes(x=x, y=y))
    assert status == 201
    dataset = {"id": body["dataset_id"]}

    wrong_shape = api.post("/train", json=_model_request(dataset, [4], 3))
    assert wrong_shape.status_code == 422
    assert wrong_shape.json()["error"]["errors"][0] == {
        "path": "model.input_shape",
        "loc": ["model", "input_shape"],
        "message": "input_shape [4] does not match dataset 'five features', whose samples have shape [5]",
    }

    wrong_units = api.post("/train", json=_model_request(dataset, [5], 10))
    assert wrong_units.status_code == 422
    assert wrong_units.json()["error"]["errors"][0] == {
        "path": "model.layers[1].units",
        "loc": ["model", "layers", 1, "units"],
        "message": "the last layer has 10 units but dataset 'five features' has 3 classes; set units to 3",
    }
