"""Serving trained models: names and versions, .npy bodies, TensorFlow Serving's REST API, the Open Inference
Protocol through Triton's own client, merged batches, the model cache and its limits."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import keras
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from service.api.app import create_app
from service.embedded import free_port
from service.settings import Settings
from tests.conftest import chapter_request, wait_for_job

pytestmark = pytest.mark.slow

NAME = "serving 숫자 model"
OTHER = "serving other"
NPY = "application/x-npy"
Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Trained:
    v1: str
    v2: str
    other: str
    rescale: float


@pytest.fixture(scope="module")
def trained(client: TestClient) -> Trained:
    """Versions 1 and 2 of NAME and one model of another name: tiny digits models, one epoch each."""
    job_ids = []
    for name in (NAME, NAME, OTHER):
        body = {**chapter_request(epochs=1), "name": name}
        response = client.post("/train", json=body)
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["job_id"])
    jobs = [wait_for_job(client, job_id) for job_id in job_ids]
    assert all(job["status"] == "succeeded" for job in jobs), [job["error"] for job in jobs]
    rescale = float(chapter_request()["dataset"]["rescale"])
    return Trained(jobs[0]["model_id"], jobs[1]["model_id"], jobs[2]["model_id"], rescale)


def digits(count: int, start: int = 0) -> Array:
    images: Array = load_digits().images[start : start + count].astype(np.float32)
    return images


def reference(settings: Settings, model_id: str, x: Array, rescale: float) -> Array:
    """What Keras itself answers for the stored file, on the preprocessed inputs."""
    model = keras.models.load_model(Path(settings.model_store) / f"{model_id}.keras", compile=False)
    result: Array = np.asarray(model.predict_on_batch(x * np.float32(rescale)))
    return result


def npy(x: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample from Prometheus text; labels select it."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            return float(value)
    raise KeyError(f"{name} {labels} not in /metrics")


def test_a_name_has_numbered_versions_and_predicts_by_either(client: TestClient, trained: Trained) -> None:
    first, second = (client.get(f"/models/{model_id}").json() for model_id in (trained.v1, trained.v2))
    assert (first["name"], first["version"]) == (NAME, 1)
    assert (second["name"], second["version"]) == (NAME, 2)
    x = digits(3).tolist()

    latest = client.post("/predict", json={"model": NAME, "instances": x}).json()
    assert (latest["model_id"], latest["name"], latest["version"]) == (trained.v2, NAME, 2)
    pinned = client.post("/predict", json={"model": f"{NAME}@1", "instances": x}).json()
    assert (pinned["model_id"], pinned["version"]) == (trained.v1, 1)
    by_id = client.post("/predict", json={"model_id": trained.v1, "instances": x}).json()
    assert by_id["model_id"] == pinned["model_id"]
    # The same model's numbers, to float32 rounding (its batch size may have changed runtime in between).
    assert np.allclose(by_id["predictions"], pinned["predictions"], atol=1e-6)

    missing = client.post("/predict", json={"model": f"{NAME}@9", "instances": x})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == f"model '{NAME}' has no version 9"
    unknown = client.post("/predict", json={"model": "no such model", "instances": x})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "no model named 'no such model'"
    both = client.post("/predict", json={"model": NAME, "model_id": trained.v1, "instances": x})
    assert both.status_code == 422
    assert both.json()["error"]["errors"][0]["path"] == "model_id"


def test_npy_bodies_and_answers(client: TestClient, settings: Settings, trained: Trained) -> None:
    x = digits(20)
    expected = reference(settings, trained.v1, x, trained.rescale)
    headers = {"Content-Type": NPY}
    as_json = client.post(f"/predict?model={quote(NAME)}@1", content=npy(x), headers=headers)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["model_id"] == trained.v1
    assert np.allclose(as_json.json()["predictions"], expected, atol=1e-5)
    # Pixels as bytes are fine too: any numbers are taken as float32.
    as_npy = client.post(
        "/predict", params={"model_id": trained.v1}, content=npy(x.astype(np.uint8)), headers={**headers, "Accept": NPY}
    )
    assert as_npy.headers["content-type"] == NPY
    assert as_npy.headers["x-model-version"] == "1"
    assert np.allclose(np.load(io.BytesIO(as_npy.content)), expected, atol=1e-5)

    flat = client.post("/predict", params={"model_id": trained.v1}, content=npy(x.reshape(20, 64)), headers=headers)
    assert flat.status_code == 422
    assert flat.json()["error"]["message"] == "the .npy array has shape [20, 64]; this model expects ['n', 8, 8]"
    garbage = client.post("/predict", params={"model_id": trained.v1}, content=b"not npy", headers=headers)
    assert garbage.status_code == 422
    assert garbage.json()["error"]["message"].startswith("the body is not a .npy array")
    nothing = client.post("/predict", content=npy(x), headers=headers)
    assert nothing.status_code == 422
    assert nothing.json()["error"]["errors"][0]["path"] == "query.model_id"


def test_large_bodies_reuse_a_receive_buffer_and_each_gets_its_own_answer(
    client: TestClient, settings: Settings, trained: Trained
) -> None:
    """Bodies over 256 KiB are received into buffers kept between requests (see service/api/body_buffers.py)."""
    bodies = client.app.state.bodies  # type: ignore[attr-defined]
    reused = bodies.reused
    headers = {"Content-Type": NPY, "Accept": NPY}
    for start in (0, 600, 300):  # 1,100 digits as float32: 282 KB each time, different images
        x = digits(1100, start)
        answer = client.post("/predict", params={"model_id": trained.v1}, content=npy(x), headers=headers)
        assert answer.status_code == 200, answer.text
        assert np.allclose(
            np.load(io.BytesIO(answer.content)), reference(settings, trained.v1, x, trained.rescale), atol=1e-5
        )
    assert bodies.reused >= reused + 2, "after the first, each body of that size took the kept buffer"
    x = digits(1100, 200)
    as_json = client.post("/predict", json={"model_id": trained.v1, "instances": x.tolist()})
    assert np.allclose(as_json.json()["predictions"], reference(settings, trained.v1, x, trained.rescale), atol=1e-5)
    refused = client.post("/predict", params={"model_id": trained.v1}, content=npy(x[:, :4]), headers=headers)
    assert refused.status_code == 422


def test_tensorflow_serving_rest_api(client: TestClient, trained: Trained) -> None:
    base = f"/v1/models/{quote(NAME)}"
    status = client.get(base).json()
    assert [s["version"] for s in status["model_version_status"]] == ["2", "1"]
    assert all(s["state"] == "AVAILABLE" and s["status"]["error_code"] == "OK" for s in status["model_version_status"])
    assert [s["version"] for s in client.get(f"{base}/versions/1").json()["model_version_status"]] == ["1"]

    metadata = client.get(f"{base}/metadata").json()
    assert metadata["model_spec"] == {"name": NAME, "signature_name": "", "version": "2"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in signature["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "8", "8"]
    assert [d["size"] for d in signature["outputs"]["output"]["tensor_shape"]["dim"]] == ["-1", "10"]
    assert client.get(f"{base}/versions/1/metadata").json()["model_spec"]["version"] == "1"

    x = digits(4).tolist()
    native = {v: client.post("/predict", json={"model": f"{NAME}@{v}", "instances": x}).json() for v in (1, 2)}
    rows = client.post(f"{base}:predict", json={"instances": x})
    assert rows.status_code == 200
    assert set(rows.json()) == {"predictions"}
    assert np.allclose(rows.json()["predictions"], native[2]["predictions"], atol=1e-6)
    named = client.post(
        f"{base}:predict", json={"signature_name": "serving_default", "instances": [{"input": i} for i in x]}
    )
    assert np.allclose(named.json()["predictions"], native[2]["predictions"], atol=1e-6)
    columns = client.post(f"{base}/versions/1:predict", json={"inputs": {"input": x}})
    assert set(columns.json()) == {"outputs"}
    assert np.allclose(columns.json()["outputs"], native[1]["predictions"], atol=1e-6)

    def error(path: str, body: Any, status: int) -> str:
        response = client.post(path, json=body)
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"}
        message: str = response.json()["error"]
        return message

    assert error(f"{base}:predict", {"instances": [[0.0] * 64]}, 400) == (
        "instances have shape [1, 64]; this model expects [1, 8, 8]"
    )
    assert "'instances'" in error(f"{base}:predict", {"instances": x, "inputs": x}, 400)
    assert "signature" in error(f"{base}:predict", {"signature_name": "classify", "instances": x}, 400)
    assert error(f"{base}:predict", {"instances": [{"pixels": x[0]}]}, 400).startswith("instance 0 has ['pixels']")
    assert error("/v1/models/nope:predict", {"instances": x}, 404) == "Servable not found for request: Latest(nope)"
    assert error(f"{base}/versions/9:predict", {"instances": x}, 404) == (
        f"Servable not found for request: Specific({NAME}, 9)"
    )
    assert client.get("/v1/models/nope").json() == {"error": "Servable not found for request: Latest(nope)"}


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """The app behind a real uvicorn on a free port, for clients that open their own connections."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_open_inference_protocol_with_tritonclient(settings: Settings, trained: Trained) -> None:
    x = digits(5)
    with running(create_app(settings)) as url:
        client = triton.InferenceServerClient(url)
        try:
            assert client.is_server_live()
            assert client.is_server_ready()
            assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
            metadata = client.get_model_metadata(NAME)
            assert metadata["versions"] == ["2", "1"]
            assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8]}]
            assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
            assert client.get_model_metadata(NAME, "1")["name"] == NAME
            assert client.is_model_ready(NAME)
            assert client.is_model_ready(NAME, "1")
            assert not client.is_model_ready("nope")

            # The client's defaults: binary tensor data both ways.
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer(NAME, [tensor], request_id="r1")
            assert result.get_response()["model_version"] == "2"
            assert result.get_response()["id"] == "r1"
            assert np.allclose(
                result.as_numpy("output"), reference(settings, trained.v2, x, trained.rescale), atol=1e-5
            )

            # JSON both ways, a fixed version.
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=False)
            wanted = triton.InferRequestedOutput("output", binary_data=False)
            result = client.infer(NAME, [tensor], model_version="1", outputs=[wanted])
            assert "data" in result.get_response()["outputs"][0]
            assert np.allclose(
                result.as_numpy("output"), reference(settings, trained.v1, x, trained.rescale), atol=1e-5
            )

            def refused(tensor: triton.InferInput, model: str = NAME) -> InferenceServerException:
                with pytest.raises(InferenceServerException) as caught:
                    client.infer(model, [tensor])
                return caught.value

            wide = triton.InferInput("input", list(x.shape), "FP64")
            wide.set_data_from_numpy(x.astype(np.float64))
            error = refused(wide)
            assert error.status() == "400"
            assert error.message() == f"inference input 'input' data-type is 'FP64', but model '{NAME}' expects 'FP32'"
            flat = triton.InferInput("input", [5, 64], "FP32")
            flat.set_data_from_numpy(x.reshape(5, 64))
            error = refused(flat)
            assert error.status() == "400"
            assert error.message() == (
                f"unexpected shape for input 'input' for model '{NAME}'. Expected [-1, 8, 8], got [5, 64]"
            )
            misnamed = triton.InferInput("pixels", list(x.shape), "FP32")
            misnamed.set_data_from_numpy(x)
            assert "unexpected inference input 'pixels'" in refused(misnamed).message()
            error = refused(tensor, "nope")
            assert error.status() == "404"
            assert error.message() == "Request for unknown model: model 'nope' is not found"
        finally:
            client.close()


def test_kserve_python_sdk_works_unchanged(settings: Settings, trained: Trained) -> None:
    """KServe's own REST client (kserve.InferenceRESTClient) on both of its protocols: liveness, readiness and
    inference, v2 with JSON tensors and with binary data."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    x = digits(3)
    expected = reference(settings, trained.v2, x, trained.rescale)

    async def check(url: str) -> None:
        base = f"http://{url}"
        v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
        v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            assert await v1.is_server_live(base)  # GET / answers KServe's v1 liveness to a client that is no browser
            assert await v1.is_model_ready(base, NAME)  # KServe reads `ready` beside TF Serving's version status
            answer = await v1.infer(base, {"instances": x.tolist()}, model_name=NAME)
            assert np.allclose(answer["predictions"], expected, atol=1e-5)

            assert await v2.is_server_live(base)
            assert await v2.is_server_ready(base)
            assert await v2.is_model_ready(base, NAME)
            assert not await v2.is_model_ready(base, "nope")
            for binary in (False, True):
                tensor = InferInput(name="input", shape=list(x.shape), datatype="FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                result = await v2.infer(base, InferRequest(model_name=NAME, infer_inputs=[tensor]), model_name=NAME)
                assert result.model_name == NAME
                assert np.allclose(result.outputs[0].as_numpy(), expected, atol=1e-5), binary
        finally:
            await v1.close()
            await v2.close()

    with running(create_app(settings)) as url:
        asyncio.run(check(url))
        page = httpx.get(f"http://{url}/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert page.headers["content-type"].startswith("text/html"), "a browser still gets the dashboard"


def test_v2_json_tensors_may_be_nested(client: TestClient, trained: Trained) -> None:
    x = digits(2)
    tensor = {"name": "input", "shape": [2, 8, 8], "datatype": "FP32"}
    flat = client.post(f"/v2/models/{quote(NAME)}/infer", json={"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]})
    nested = client.post(f"/v2/models/{quote(NAME)}/infer", json={"inputs": [{**tensor, "data": x.tolist()}]})
    assert flat.status_code == nested.status_code == 200
    # The same numbers, to float32 rounding: a runtime chosen for the batch size in between may sum in another order.
    flat_outputs, nested_outputs = flat.json().pop("outputs"), nested.json().pop("outputs")
    assert {**flat.json(), "outputs": None} == {**nested.json(), "outputs": None}
    assert np.allclose(flat_outputs[0].pop("data"), nested_outputs[0].pop("data"), atol=1e-6)
    assert flat_outputs == nested_outputs
    output = flat.json()["outputs"][0]
    assert (output["name"], output["datatype"], output["shape"]) == ("output", "FP32", [2, 10])
    short = client.post(f"/v2/models/{quote(NAME)}/infer", json={"inputs": [{**tensor, "data": [1.0] * 64}]})
    assert short.status_code == 400
    assert short.json() == {"error": "input 'input' has 64 elements in 'data'; its shape [2, 8, 8] needs 128"}


def test_instance_limit_holds_on_every_protocol(settings: Settings, trained: Trained) -> None:
    x = digits(4)
    with TestClient(create_app(settings.model_copy(update={"max_predict_instances": 3}))) as small:
        native = small.post("/predict", json={"model_id": trained.v1, "instances": x.tolist()})
        assert native.status_code == 413
        assert native.json()["error"]["type"] == "too_many_instances"
        assert native.json()["error"]["message"] == (
            "4 instances in one request; the limit is 3 (TRAINSERVE_MAX_PREDICT_INSTANCES): split the request"
        )
        binary = small.post("/predict", params={"model_id": trained.v1}, content=npy(x), headers={"Content-Type": NPY})
        assert binary.status_code == 413
        tf_serving = small.post(f"/v1/models/{quote(NAME)}:predict", json={"instances": x.tolist()})
        assert tf_serving.status_code == 413
        assert "limit is 3" in tf_serving.json()["error"]
        tensor = {"name": "input", "shape": [4, 8, 8], "datatype": "FP32", "data": x.reshape(-1).tolist()}
        v2 = small.post(f"/v2/models/{quote(NAME)}/infer", json={"inputs": [tensor]})
        assert v2.status_code == 413
        assert "limit is 3" in v2.json()["error"]
        assert small.post("/predict", json={"model_id": trained.v1, "instances": x[:3].tolist()}).status_code == 200


def test_concurrent_requests_are_merged_and_each_gets_its_own_answer(settings: Settings, trained: Trained) -> None:
    app = create_app(settings.model_copy(update={"predict_xla": "always"}))
    sizes = [1, 2, 3] * 6  # 18 requests, 36 instances
    inputs = []
    start = 0
    for size in sizes:
        inputs.append(digits(size, start))
        start += size
    expected = reference(settings, trained.v2, np.concatenate(inputs), trained.rescale)

    async def burst() -> tuple[list[dict[str, Any]], str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as http:
            responses = await asyncio.gather(
                *(http.post("/predict", json={"model": NAME, "instances": x.tolist()}) for x in inputs)
            )
            assert all(r.status_code == 200 for r in responses)
            return [r.json() for r in responses], (await http.get("/metrics")).text

    # The first burst waits for the model to load; the second finds it loaded; by the third every batch size is
    # compiled with XLA (padded to a power of two).
    for round_ in (1, 2, 3):
        if round_ == 3:
            call = app.state.engine.cache.peek(trained.v2).call
            call.compile_all()
            call.settle()
        answers, metrics = asyncio.run(burst())
        offset = 0
        for size, answer in zip(sizes, answers, strict=True):
            assert np.allclose(answer["predictions"], expected[offset : offset + size], atol=1e-5)
            offset += size
        calls = metric(metrics, "trainserve_batch_requests_count", model_id=trained.v2)
        assert metric(metrics, "trainserve_batch_requests_sum", model_id=trained.v2) == round_ * len(sizes)
        assert metric(metrics, "trainserve_batch_instances_sum", model_id=trained.v2) == round_ * sum(sizes)
        assert calls < round_ * len(sizes), "concurrent requests were merged into fewer calls"
        assert metric(metrics, "trainserve_batch_requests_bucket", model_id=trained.v2, le="1") < calls
    assert metric(metrics, "trainserve_model_calls_total", model_id=trained.v2, call="xla") > 0


def test_cache_keeps_the_most_recently_used_models(settings: Settings, trained: Trained) -> None:
    x = digits(1).tolist()

    def cache_after(app_settings: Settings, model_ids: list[str]) -> str:
        with TestClient(create_app(app_settings)) as http:
            for model_id in model_ids:
                assert http.post("/predict", json={"model_id": model_id, "instances": x}).status_code == 200
            text: str = http.get("/metrics").text
            return text

    a, b, c = trained.v1, trained.v2, trained.other
    two = cache_after(settings.model_copy(update={"predict_cache_size": 2}), [a, b, c, a, a, c])
    # a, b loaded; c evicts a (least recent); a evicts b; then a and c are hits.
    assert metric(two, "trainserve_model_loads_total") == 4
    assert metric(two, "trainserve_model_evictions_total") == 2
    assert metric(two, "trainserve_models_loaded") == 2

    weights = (64 * 100 + 100 + 100 * 10 + 10) * 4
    # A model's memory is its weights and its flatbuffer (which holds another copy of them).
    flatbuffers = {m: (Path(settings.model_store) / f"{m}.tflite").stat().st_size for m in (a, b)}
    room = weights + max(flatbuffers.values()) + 1
    small = cache_after(settings.model_copy(update={"predict_cache_bytes": room}), [a, b, a])
    assert metric(small, "trainserve_models_loaded") == 1
    assert metric(small, "trainserve_models_loaded_bytes") == weights + flatbuffers[a]
    assert metric(small, "trainserve_model_loads_total") == 3
    without = cache_after(settings.model_copy(update={"predict_litert": "never"}), [a])
    assert metric(without, "trainserve_models_loaded_bytes") == weights


def test_a_model_file_changed_after_saving_is_not_loaded(settings: Settings, trained: Trained) -> None:
    path: Path = Path(settings.model_store) / f"{trained.other}.keras"
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\0")
        with TestClient(create_app(settings)) as http:
            response = http.post("/predict", json={"model_id": trained.other, "instances": digits(1).tolist()})
            assert response.status_code == 500
            assert response.json()["error"]["type"] == "store_error"
            assert "does not match the sha256 recorded when it was saved" in response.json()["error"]["message"]
            v2 = http.post(f"/v2/models/{quote(OTHER)}/infer", json={"inputs": []})
            assert v2.status_code == 500
            assert "sha256" in v2.json()["error"]
    finally:
        path.write_bytes(original)


def test_small_batches_run_on_the_flatbuffer_published_beside_the_model(
    client: TestClient, settings: Settings, trained: Trained
) -> None:
    """The worker converted the model when it published it; the API checks the flatbuffer and runs it, on every
    protocol, with Keras' answers."""
    path: Path = Path(settings.model_store) / f"{trained.v1}.tflite"
    record = client.get(f"/models/{trained.v1}").json()["litert"]
    assert record == {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size_bytes": path.stat().st_size,
        "error": None,
        "rescaled": True,  # it takes the dataset's units, as the SavedModel export it was converted from
    }
    app = create_app(settings.model_copy(update={"predict_litert": "always", "predict_xla": "never"}))
    x = digits(5, 20)
    expected = reference(settings, trained.v1, x, trained.rescale)
    with TestClient(app) as http:
        assert http.post("/predict", json={"model_id": trained.v1, "instances": x[:1].tolist()}).status_code == 200
        call = app.state.engine.cache.peek(trained.v1).call
        call.compile_all()
        call.settle()
        assert set(call.choices.values()) == {"litert"}
        before = call.calls["litert"]
        answers = [
            http.post("/predict", json={"model_id": trained.v1, "instances": x.tolist()}).json()["predictions"],
            http.post(f"/v1/models/{quote(NAME)}/versions/1:predict", json={"instances": x.tolist()}).json()[
                "predictions"
            ],
            np.load(
                io.BytesIO(
                    http.post(
                        f"/predict?model_id={trained.v1}", content=npy(x), headers={"content-type": NPY, "accept": NPY}
                    ).content
                )
            ),
        ]
        for answer in answers:
            assert np.allclose(answer, expected, atol=1e-5)
        metrics = http.get("/metrics").text
    assert metric(metrics, "trainserve_model_calls_total", model_id=trained.v1, call="litert") == before + 3
    assert metric(metrics, "trainserve_model_litert", model_id=trained.v1) == 1
    assert metric(metrics, "trainserve_model_runtime", model_id=trained.v1, batch_size="8", runtime="litert") == 1


def test_a_flatbuffer_changed_after_saving_never_runs(settings: Settings, trained: Trained) -> None:
    """Its sha256 is not the one recorded: the model is served from its verified .keras file, on TensorFlow."""
    path: Path = Path(settings.model_store) / f"{trained.other}.tflite"
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-8] + bytes(8))
        app = create_app(settings.model_copy(update={"predict_litert": "always"}))
        x = digits(2, 40)
        with TestClient(app) as http:
            response = http.post("/predict", json={"model_id": trained.other, "instances": x.tolist()})
            assert response.status_code == 200, response.text
            call = app.state.engine.cache.peek(trained.other).call
            call.compile_all()
            call.settle()
            again = http.post("/predict", json={"model_id": trained.other, "instances": x.tolist()})
            metrics = http.get("/metrics").text
        expected = reference(settings, trained.other, x, trained.rescale)
        for answer in (response, again):
            assert np.allclose(answer.json()["predictions"], expected, atol=1e-5)
        assert call.litert is None
        assert call.litert_refusal is not None
        assert "does not match the sha256 recorded" in call.litert_refusal
        assert "litert" not in call.choices.values()
        assert call.calls["litert"] == 0
        assert metric(metrics, "trainserve_store_integrity_failures_total", file="litert") == 1
        assert metric(metrics, "trainserve_model_litert", model_id=trained.other) == 0
    finally:
        path.write_bytes(original)
