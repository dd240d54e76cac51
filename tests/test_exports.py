"""Exports of a trained model, downloaded as a user would and loaded with each runtime's own loader: the
SavedModel with ``tf.saved_model.load`` from TensorFlow Serving's layout, the flatbuffer with the LiteRT
interpreter, the weights into the same architecture, all against the ``.keras`` download on the same inputs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import keras
import numpy as np
import numpy.typing as npt
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits
from sqlalchemy import update

from service.db import ModelRow, session_scope
from service.exports import CHUNK_BYTES, rebased_archive, safe_name
from service.settings import Settings
from service.store import StoreError, export_key, litert_key, sha256_file
from tests.conftest import small_cnn_request, train

pytestmark = pytest.mark.slow

Array = npt.NDArray[np.float32]
RESCALE = 1 / 16
NAME = "숫자 CNN exports"


@pytest.fixture(scope="module")
def cnn(client: TestClient) -> dict[str, Any]:
    """The book's CNN made small, trained on digits in 0–16 with a rescale of 1/16."""
    job = train(client, {**small_cnn_request(epochs=2), "name": NAME})
    assert job["status"] == "succeeded", job["error"]
    model: dict[str, Any] = client.get(f"/models/{job['model_id']}").json()
    return model


@pytest.fixture(scope="module")
def digits() -> Array:
    """Twelve digits in the dataset's own units (0–16), as every prediction protocol takes them."""
    images: Array = load_digits().images[:12].astype(np.float32)
    return images


def download(client: TestClient, model_id: str, export: str, tmp_path: Path) -> Path:
    response = client.get(f"/models/{model_id}/download", params={"format": export})
    assert response.status_code == 200, response.text
    path = tmp_path / f"download-{export}"
    path.write_bytes(response.content)
    return path


def keras_model(client: TestClient, model_id: str, tmp_path: Path) -> Any:
    path = download(client, model_id, "keras", tmp_path).rename(tmp_path / "model.keras")
    return keras.saving.load_model(path, compile=False)


def saved_model_dir(client: TestClient, model: dict[str, Any], tmp_path: Path) -> Path:
    """The SavedModel archive unpacked as TensorFlow Serving's --model_base_path expects it; returns the version
    directory."""
    archive = download(client, model["model_id"], "savedmodel", tmp_path)
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "serving", filter="data")
    base = safe_name(model["name"])
    version = str(model["version"])
    assert names[:2] == [base, f"{base}/{version}"]
    assert {f"{base}/{version}/saved_model.pb", f"{base}/{version}/variables/variables.index"} <= set(names)
    assert all(name.startswith(f"{base}/{version}/") for name in names[2:])
    return tmp_path / "serving" / base / version


def test_every_export_answers_as_the_keras_model(
    client: TestClient, cnn: dict[str, Any], digits: Array, tmp_path: Path
) -> None:
    model_id = cnn["model_id"]
    expected = keras_model(client, model_id, tmp_path).predict_on_batch(digits * np.float32(RESCALE))
    assert expected.shape == (12, 10)

    # The SavedModel, loaded as TensorFlow Serving loads it: its serving_default takes the dataset's units.
    loaded = tf.saved_model.load(str(saved_model_dir(client, cnn, tmp_path)))
    serving = loaded.signatures["serving_default"]
    assert list(serving.structured_input_signature[1]) == ["input"]
    spec = serving.structured_input_signature[1]["input"]
    assert (spec.dtype, spec.shape.as_list()) == (tf.float32, [None, 8, 8])
    from_savedmodel = serving(input=tf.constant(digits))["output"].numpy()
    np.testing.assert_allclose(from_savedmodel, expected, rtol=1e-5, atol=1e-6)

    # The flatbuffer, run by the LiteRT interpreter through its signature: the same input, output and units.
    interpreter = Interpreter(model_content=download(client, model_id, "litert", tmp_path).read_bytes())
    runner = interpreter.get_signature_runner("serving_default")
    from_litert = runner(input=digits)["output"]
    np.testing.assert_allclose(from_litert, expected, rtol=1e-5, atol=1e-6)

    # The weights, loaded into the same architecture freshly built.
    fresh = keras.models.clone_model(keras_model(client, model_id, tmp_path))
    assert not np.allclose(fresh.predict_on_batch(digits * np.float32(RESCALE)), expected, atol=1e-3)
    fresh.load_weights(download(client, model_id, "weights", tmp_path).rename(tmp_path / "model.weights.h5"))
    np.testing.assert_allclose(fresh.predict_on_batch(digits * np.float32(RESCALE)), expected, rtol=1e-5, atol=1e-6)

    # This service's TensorFlow Serving API describes and answers the same signature.
    name = quote(cnn["name"], safe="")
    metadata = client.get(f"/v1/models/{name}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    inputs, outputs = metadata["serving_default"]["inputs"], metadata["serving_default"]["outputs"]
    assert list(inputs) == ["input"]
    assert list(outputs) == ["output"]
    assert [int(d["size"]) for d in inputs["input"]["tensor_shape"]["dim"]] == [-1, 8, 8]
    answer = client.post(f"/v1/models/{name}:predict", json={"instances": digits.tolist()})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["predictions"]), from_savedmodel, rtol=1e-5, atol=1e-6)


def test_the_model_record_lists_its_exports(client: TestClient, cnn: dict[str, Any], settings: Settings) -> None:
    store = Path(settings.model_store)
    for export in ("savedmodel", "weights"):
        record = cnn["exports"][export]
        assert record["size_bytes"] == (store / export_key(cnn["model_id"], export)).stat().st_size > 0
    assert cnn["litert"]["rescaled"] is True
    assert cnn["litert"]["size_bytes"] == (store / litert_key(cnn["model_id"])).stat().st_size


def test_an_unknown_format_is_refused_naming_the_allowed_ones(client: TestClient, cnn: dict[str, Any]) -> None:
    response = client.get(f"/models/{cnn['model_id']}/download", params={"format": "onnx"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["errors"][0]["path"] == "query.format"
    for allowed in ("keras", "savedmodel", "litert", "weights"):
        assert allowed in error["errors"][0]["message"]
    parameters = client.get("/openapi.json").json()["paths"]["/models/{model_id}/download"]["get"]["parameters"]
    schema = next(p for p in parameters if p["name"] == "format")["schema"]
    assert schema["enum"] == ["keras", "savedmodel", "litert", "weights"]
    assert schema["default"] == "keras"


def recurrent_request() -> dict[str, Any]:
    """Digits read row by row by an LSTM: a model TFLite's builtin ops do not run."""
    return {
        "name": "digits lstm exports",
        "model": {
            "input_shape": [8, 8],
            "layers": [{"type": "lstm", "units": 8}, {"type": "dense", "units": 10, "activation": "softmax"}],
        },
        "compile": {"optimizer": "adam"},
        "dataset": {"name": "digits", "rescale": RESCALE},
        "fit": {"epochs": 1, "seed": 1},
    }


@pytest.fixture(scope="module")
def lstm(client: TestClient) -> dict[str, Any]:
    job = train(client, recurrent_request())
    assert job["status"] == "succeeded", job["error"]
    model: dict[str, Any] = client.get(f"/models/{job['model_id']}").json()
    return model


def test_a_recurrent_model_exports_a_savedmodel_and_says_why_it_has_no_flatbuffer(
    client: TestClient, lstm: dict[str, Any], digits: Array, tmp_path: Path
) -> None:
    response = client.get(f"/models/{lstm['model_id']}/download", params={"format": "litert"})
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "export_unavailable"
    assert "recurrent layers" in response.json()["error"]["message"]
    expected = keras_model(client, lstm["model_id"], tmp_path).predict_on_batch(digits * np.float32(RESCALE))
    serving = tf.saved_model.load(str(saved_model_dir(client, lstm, tmp_path))).signatures["serving_default"]
    np.testing.assert_allclose(serving(input=tf.constant(digits))["output"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_corrupted_export_is_refused_not_served(client: TestClient, lstm: dict[str, Any], settings: Settings) -> None:
    """A byte changed in a stored export: the download is a 500 naming the file that is not the one recorded,
    for the archive as for the weights; put back, it is served again."""
    for export in ("savedmodel", "weights"):
        path = Path(settings.model_store) / export_key(lstm["model_id"], export)
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            response = client.get(f"/models/{lstm['model_id']}/download", params={"format": export})
            assert response.status_code == 500
            assert response.json()["error"]["type"] == "store_error"
            assert "does not match the sha256 recorded" in response.json()["error"]["message"]
        finally:
            path.write_bytes(original)
        assert client.get(f"/models/{lstm['model_id']}/download", params={"format": export}).status_code == 200


def test_a_model_published_before_exports_says_so(client: TestClient, lstm: dict[str, Any], settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(ModelRow).where(ModelRow.id == lstm["model_id"]).values(exports=None))
    try:
        for export in ("savedmodel", "weights"):
            response = client.get(f"/models/{lstm['model_id']}/download", params={"format": export})
            assert response.status_code == 409
            assert "was published before this service exported" in response.json()["error"]["message"]
        assert client.get(f"/models/{lstm['model_id']}/download").status_code == 200  # .keras, as ever
    finally:
        with session_scope(settings.database_url) as session:
            session.execute(update(ModelRow).where(ModelRow.id == lstm["model_id"]).values(exports=lstm["exports"]))


def test_the_archive_is_streamed(client: TestClient, cnn: dict[str, Any]) -> None:
    """The SavedModel comes as a gzip stream (no length known before it ends) that unpacks to the stored files."""
    with client.stream("GET", f"/models/{cnn['model_id']}/download", params={"format": "savedmodel"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/gzip"
        assert "content-length" not in response.headers
        body = b"".join(response.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        assert any(name.endswith("/saved_model.pb") for name in tar.getnames())


def test_an_archive_is_made_in_pieces_of_bounded_size(tmp_path: Path) -> None:
    """Ten MiB of weights go out in pieces of about a MiB each, and unpack to the same bytes under the new names."""
    content = np.random.default_rng(0).random(10 * (1 << 20) // 8).tobytes()
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "variables.data-00000-of-00001").write_bytes(content)
    stored = tmp_path / "stored.tar"
    with tarfile.open(stored, "w") as tar:
        tar.add(tmp_path / "variables", arcname="variables")
    pieces = list(rebased_archive(stored, sha256_file(stored), "model/3"))
    assert len(pieces) >= 10
    assert max(len(piece) for piece in pieces) <= CHUNK_BYTES + 64 * 1024
    with tarfile.open(fileobj=io.BytesIO(b"".join(pieces)), mode="r:gz") as tar:
        assert tar.getnames() == [
            "model",
            "model/3",
            "model/3/variables",
            "model/3/variables/variables.data-00000-of-00001",
        ]
        member = tar.extractfile("model/3/variables/variables.data-00000-of-00001")
        assert member is not None
        assert member.read() == content


def test_an_archive_whose_file_changes_while_it_is_read_is_cut_short(tmp_path: Path) -> None:
    """The sha256 is taken again as the file is read: other bytes end the stream with an error, before the
    archive's end, so what the client has is no whole archive."""
    (tmp_path / "saved_model.pb").write_bytes(b"graph" * 1000)
    stored = tmp_path / "stored.tar"
    with tarfile.open(stored, "w") as tar:
        tar.add(tmp_path / "saved_model.pb", arcname="saved_model.pb")
    with pytest.raises(StoreError, match="changed while it was sent"):
        list(rebased_archive(stored, "0" * 64, "model/1"))
