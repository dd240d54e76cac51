"""Seeing inside a trained CNN (the book's 8-3): a layer's weights, their histogram and filter images, next to the
same layer untrained; the feature maps of one input. Every number is checked against Keras itself on the stored
model, downloaded and loaded as a learner would."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits

from service.settings import Settings
from tests.conftest import small_cnn_request, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cnn(client: TestClient, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any]:
    """A trained CNN's record, and its .keras file loaded by Keras."""
    import keras

    job = train(client, small_cnn_request())
    assert job["status"] == "succeeded", job["error"]
    model = client.get(f"/models/{job['model_id']}").json()
    path = Path(tmp_path_factory.mktemp("cnn")) / "cnn.keras"
    path.write_bytes(client.get(f"/models/{job['model_id']}/download").content)
    return model, keras.models.load_model(path)


def pixels(data_url: str) -> np.ndarray[Any, Any]:
    header, _, encoded = data_url.partition(",")
    assert header == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))


def shown(values: np.ndarray[Any, Any], low: float, high: float) -> np.ndarray[Any, Any]:
    """imshow(vmin=low, vmax=high, cmap='gray') as 8-bit grey."""
    return np.rint(np.clip((values.astype(np.float64) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def test_a_conv_layers_weights_equal_keras_own(client: TestClient, cnn: tuple[dict[str, Any], Any]) -> None:
    record, model = cnn
    answer = client.get(f"/models/{record['model_id']}/layers/conv2d/weights", params={"bins": 12})
    assert answer.status_code == 200, answer.text
    weights = answer.json()
    assert (weights["layer"], weights["type"], weights["untrained"]) == ("conv2d", "Conv2D", False)
    kernel = np.asarray(model.get_layer("conv2d").get_weights()[0])
    stats = {w["name"]: w for w in weights["weights"]}
    assert stats["kernel"]["shape"] == [3, 3, 1, 8] == list(kernel.shape)
    assert stats["bias"]["shape"] == [8]
    assert stats["kernel"]["mean"] == pytest.approx(float(kernel.mean()), abs=1e-7)
    assert stats["kernel"]["std"] == pytest.approx(float(kernel.std()), abs=1e-7)
    counts, edges = np.histogram(kernel.reshape(-1), bins=12)
    assert stats["kernel"]["histogram"]["counts"] == counts.tolist()
    assert stats["kernel"]["histogram"]["edges"] == pytest.approx(edges.tolist(), abs=1e-7)

    bound = float(np.abs(kernel[:, :, 0, :]).max())
    assert weights["image_scale"] == pytest.approx(bound)
    assert [image["index"] for image in weights["images"]] == list(range(8))
    for image in weights["images"]:
        assert np.array_equal(pixels(image["png"]), shown(kernel[:, :, 0, image["index"]], -bound, bound))


def test_the_untrained_layer_is_a_fresh_initialisation(client: TestClient, cnn: tuple[dict[str, Any], Any]) -> None:
    record, model = cnn
    url = f"/models/{record['model_id']}/layers/conv2d_1/weights"
    first = client.get(url, params={"untrained": True, "seed": 1}).json()
    again = client.get(url, params={"untrained": True, "seed": 1}).json()
    assert first["untrained"] is True
    assert first["weights"] == again["weights"], "the same seed, the same initialisation"
    kernel = next(w for w in first["weights"] if w["name"] == "kernel")
    trained = np.asarray(model.get_layer("conv2d_1").get_weights()[0])
    assert kernel["shape"] == list(trained.shape) == [3, 3, 8, 16]
    assert kernel["mean"] != pytest.approx(float(trained.mean()), abs=1e-9)
    # Glorot uniform over fan-in 72 and fan-out 144: within ±sqrt(6 / 216), standard deviation limit / sqrt(3).
    limit = (6 / (72 + 144)) ** 0.5
    assert -limit <= kernel["min"]
    assert kernel["max"] <= limit
    assert kernel["std"] == pytest.approx(limit / 3**0.5, rel=0.1)
    bias = next(w for w in first["weights"] if w["name"] == "bias")
    assert (bias["min"], bias["max"]) == (0.0, 0.0)


def test_the_same_seed_gives_the_same_layer_while_models_load_beside_it(tmp_path: Path) -> None:
    """Loading a stored model creates layers, and every layer draws its initializers' seeds from Python's random
    generator: a load in another thread between a seeded build's seed and its layers would change what it draws
    (the dashboard asks for a model's trained and untrained weights at once)."""
    import threading

    import keras

    from service.keras_build import build_seeded, load_stored_model
    from service.spec import TrainRequest

    spec = TrainRequest.model_validate(small_cnn_request()).model
    path = tmp_path / "model.keras"
    build_seeded(spec, 0).save(path)
    expected = [w.numpy() for w in build_seeded(spec, 42).weights]
    done = threading.Event()

    def load_again_and_again() -> None:
        while not done.wait(0.002):  # a breath between loads, so that the builds get their turn
            load_stored_model(path)

    loaders = [threading.Thread(target=load_again_and_again) for _ in range(2)]
    for loader in loaders:
        loader.start()
    try:
        for _ in range(8):
            drawn = [w.numpy() for w in build_seeded(spec, 42).weights]
            assert all(np.array_equal(a, b) for a, b in zip(drawn, expected, strict=True))
    finally:
        done.set()
        for loader in loaders:
            loader.join()
    keras.backend.clear_session()


def test_feature_maps_of_one_digit_equal_a_keras_sub_model(client: TestClient, cnn: tuple[dict[str, Any], Any]) -> None:
    import keras

    record, model = cnn
    digit = load_digits().images[0]
    answer = client.post(
        f"/models/{record['model_id']}/activations",
        json={"instance": digit.tolist(), "layers": ["conv2d", "conv2d_1", "dense"]},
    )
    assert answer.status_code == 200, answer.text
    outputs = {o["layer"]: o for o in answer.json()["outputs"]}
    # What the book does: a model from the input to the layers' outputs, on the rescaled image.
    probe = keras.Model(
        inputs=model.inputs, outputs=[model.get_layer(n).output for n in ("conv2d", "conv2d_1", "dense")]
    )
    expected = probe.predict((digit * np.float32(1 / 16))[None].astype(np.float32), verbose=0)
    for name, values in zip(("conv2d", "conv2d_1", "dense"), expected, strict=True):
        assert outputs[name]["shape"] == list(values.shape[1:])
        assert np.allclose(outputs[name]["values"], values[0], atol=1e-6), name
    maps = outputs["conv2d"]["images"]
    assert len(maps) == 8
    first_map = expected[0][0][:, :, 0]
    assert np.array_equal(pixels(maps[0]["png"]), shown(first_map, float(first_map.min()), float(first_map.max())))
    assert outputs["dense"]["images"] is None
    assert outputs["dense"]["values"] == pytest.approx(
        client.post("/predict", json={"model_id": record["model_id"], "instances": [digit.tolist()]}).json()[
            "predictions"
        ][0],
        abs=1e-6,
    )


def test_what_the_model_does_not_have_is_refused(client: TestClient, cnn: tuple[dict[str, Any], Any]) -> None:
    record, _ = cnn
    missing = client.get(f"/models/{record['model_id']}/layers/conv3/weights")
    assert missing.status_code == 404, missing.text
    assert "its layers: reshape, conv2d, max_pooling2d, conv2d_1, flatten, dense" in missing.json()["error"]["message"]

    url = f"/models/{record['model_id']}/activations"
    wrong = client.post(url, json={"instance": [[0.0] * 8] * 7})
    assert wrong.status_code == 422, wrong.text
    assert wrong.json()["error"]["errors"][0]["path"] == "instance"
    unknown = client.post(url, json={"instance": [[0.0] * 8] * 8, "layers": ["conv2d", "pool"]})
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["error"]["errors"][0]["path"] == "layers[1]"
    channel = client.get(f"/models/{record['model_id']}/layers/conv2d/weights", params={"channel": 1})
    assert channel.status_code == 422, channel.text
    assert channel.json()["error"]["errors"][0]["path"] == "channel"


def test_outputs_larger_than_an_answer_may_be_are_refused_before_the_model_runs(
    settings: Settings, cnn: tuple[dict[str, Any], Any]
) -> None:
    from service.api.app import create_app

    record, _ = cnn
    small = settings.model_copy(update={"max_response_bytes": 5_000})
    with TestClient(create_app(small)) as api:
        url = f"/models/{record['model_id']}/activations"
        digit = load_digits().images[0].tolist()
        refused = api.post(url, json={"instance": digit, "layers": ["conv2d", "dense"]})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]["errors"][0]
        assert error["path"] == "layers"
        assert (
            "more than this service sends (TRAINSERVE_MAX_RESPONSE_BYTES: 5,000); ask for fewer layers"
            in (error["message"])
        )
        assert api.post(url, json={"instance": digit, "layers": ["dense"]}).status_code == 200
