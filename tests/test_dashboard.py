"""The dashboard at `/`, driven in a real headless Chromium (Debian's `chromium`, through Playwright) against the API
served by uvicorn with the session's Celery worker: a job started from the form draws its curves live, the
chapter's optimizers overlaid, a drawn digit predicted, a model's summary, datasets with their sample images.

Screenshots of each page go to `$TRAINSERVE_SCREENSHOTS` when it is set (to look at them), else to a temporary
directory.
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.routers.dashboard import FILES, ROOT
from service.examples import all_examples, chapter_examples
from service.settings import Settings
from tests.conftest import chapter_request, small_cnn_request
from tests.datafiles import images_zip

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Response

ROOT_DIR = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB_TIMEOUT_MS = 180_000


def unavailable(reason: str) -> None:
    """In CI a missing browser is a failure, never a silent skip; on a developer's machine, a skip that says why."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        unavailable("the dashboard tests need Debian's Chromium: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the dashboard tests need Playwright: pip install -e '.[test]'")
    assert chromium is not None
    with sync_playwright() as playwright:
        # A persistent context would tie the profile to one page set; a plain launch gets a fresh temporary one.
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = Path(os.environ.get("TRAINSERVE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextmanager
def watched_page(
    browser: Browser,
    base_url: str,
    *,
    refused: Callable[[Response], bool] = lambda _: False,
    logged: Callable[[str], bool] = lambda _: False,
) -> Iterator[Page]:
    """A fresh page that fails the test on any script error, console error or failed request but those a test
    means to meet: the answers ``refused`` accepts, and the console errors ``logged`` accepts (Chromium logs every
    refused request there too)."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    opened = context.new_page()
    problems: list[str] = []

    def answered(response: Response) -> None:
        if response.status >= 400 and not refused(response):
            problems.append(f"{response.status} {response.url}")

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and not logged(message.text):
            problems.append(message.text)

    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on("console", console)
    opened.on("response", answered)
    try:
        yield opened
    finally:
        context.close()
    assert not problems, problems


@pytest.fixture
def page(browser: Browser, live_url: str) -> Iterator[Page]:
    with watched_page(browser, live_url) as opened:
        yield opened


@pytest.fixture(scope="module")
def http(live_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_url, timeout=60) as client:
        yield client


def wait_until_finished(http: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


@pytest.fixture(scope="module")
def digits_model(http: httpx.Client) -> dict[str, Any]:
    """The chapter's relu + Adam model on digits, 3 epochs: a model named 손글씨 숫자 모델."""
    job_id = http.post("/train", json=chapter_request(epochs=3)).json()["job_id"]
    job = wait_until_finished(http, job_id)
    assert job["status"] == "succeeded", job
    model: dict[str, Any] = http.get(f"/models/{job['model_id']}").json()
    return model


# ---- served, public, packaged ------------------------------------------------------------------------------------


def test_the_dashboard_is_served_without_a_key_and_the_api_still_needs_one(settings: Settings) -> None:
    from service.api.app import create_app

    client = TestClient(create_app(settings.model_copy(update={"api_keys": "s3cret"})))
    page = client.get("/", headers={"Accept": "text/html"})  # as a browser asks for it
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert client.get("/").json() == {"status": "alive"}, "any other client: KServe's v1 liveness"
    assert '<script type="module" src="/dashboard/app.js">' in page.text
    for name in ("app.js", "pages/predict.js", "style.css", "vendor/chart.umd.min.js"):
        response = client.get(f"/dashboard/{name}")
        assert response.status_code == 200, name
    assert client.get("/dashboard/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/dashboard/../service/settings.py").status_code in {401, 404}
    assert client.get("/dashboard/__init__.py").status_code == 404
    assert client.get("/examples").status_code == 401
    assert client.get("/jobs").status_code == 401
    examples = client.get("/examples", headers={"Authorization": "Bearer s3cret"}).json()
    assert examples["count"] == len(all_examples())
    adam = next(e for e in examples["data"] if e["key"] == "digits_relu_adam")
    assert adam["request"] == chapter_examples()["digits_relu_adam"]
    assert "/examples" in client.get("/openapi.json").json()["paths"]
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_every_dashboard_file_ships_in_the_wheel() -> None:
    patterns = tomllib.loads((ROOT_DIR / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["service.dashboard"]
    for name in FILES:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in shipped), f"{name} is not in package-data"
    # Every module a script imports is one of the served files.
    for name in [n for n in FILES if n.endswith(".js") and not n.startswith("vendor/")]:
        folder = Path(name).parent
        for imported in re.findall(r'^import .* from "(\.[^"]+)";$', (ROOT / name).read_text(), re.MULTILINE):
            target = os.path.normpath(folder / imported)
            assert target in FILES, f"{name} imports {imported}, which is not served"


# ---- in the browser ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_started_from_the_form_draws_its_curves_as_epochs_finish(
    page: Page, http: httpx.Client, shots: Path
) -> None:
    page.goto("/#/new")
    page.locator("select[name=example]").select_option("digits_relu_adam")
    assert page.locator("input[name='model.name']").input_value() == "손글씨 숫자 모델"
    page.locator("input[name=name]").fill("대시보드 relu + adam")
    page.locator("input[name='fit.epochs']").fill("3")
    page.wait_for_function("window.trainserve.builder.state === 'ok'")
    page.screenshot(path=shots / "new_job.png", full_page=True)
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]

    seen: list[int] = []  # the loss chart's point count, as the test watches it

    def look() -> None:
        count = int(page.evaluate("document.querySelector('canvas[data-chart=loss]')?.dataset.points ?? '0'"))
        if not seen or count != seen[-1]:
            seen.append(count)

    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while time.monotonic() < deadline and not page.locator("h1 [data-status=succeeded]").count():
        look()
        time.sleep(0.05)
    assert page.locator("h1 [data-status=succeeded]").count(), page.locator("h1").inner_text()
    look()  # the last epoch may come in the same read of the stream as the job's end
    assert page.locator("h1").inner_text().startswith("대시보드 relu + adam")

    # Every epoch event added one training and one validation point to each chart, while the page still showed
    # the job unfinished: drawn as the epochs came, not once at the end.
    log = page.evaluate("window.trainserve.epochLog")
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    assert [entry["points"]["loss"] for entry in log] == [2, 4, 6]
    assert [entry["points"]["accuracy"] for entry in log] == [2, 4, 6]
    assert all(entry["status"] in {"queued", "running"} for entry in log), log
    assert seen == sorted(seen), seen
    assert seen[-1] == 6, seen

    history = http.get(f"/jobs/{job_id}").json()["history"]
    curves = page.evaluate(
        "Object.fromEntries(window.trainserve.charts.accuracy.data.datasets.map(d => [d.key, d.data]))"
    )
    assert [p["y"] for p in curves["train"]] == [row["accuracy"] for row in history]
    assert [p["y"] for p in curves["val"]] == [row["val_accuracy"] for row in history]
    page.screenshot(path=shots / "job.png", full_page=True)

    page.goto("/#/jobs")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    row.locator("[data-status=succeeded]").wait_for()
    assert "3/3" in row.inner_text()
    page.screenshot(path=shots / "jobs.png", full_page=True)


@pytest.mark.slow
def test_the_chapters_optimizers_overlaid_on_one_chart(page: Page, http: httpx.Client, shots: Path) -> None:
    page.goto("/#/compare")
    page.locator("input[type=number]").fill("2")
    page.get_by_role("button", name="Train the chapter's six optimizers on digits").click()
    page.wait_for_url(re.compile(r"#/compare\?jobs="))
    ids = page.url.split("jobs=", 1)[1].split(",")
    assert len(ids) == 6
    page.wait_for_function(
        "() => { const c = window.trainserve.charts.compare;"
        " return c && c.data.datasets.length === 6 && c.data.datasets.every(d => d.data.length === 2); }",
        timeout=JOB_TIMEOUT_MS,
    )
    lines = page.evaluate(
        "window.trainserve.charts.compare.data.datasets"
        ".map(d => ({label: d.label, key: d.key, ys: d.data.map(p => p.y)}))"
    )
    assert [line["label"] for line in lines] == [f"digits relu + {o}" for o in ("sgd", "momentum", "nesterov")] + [
        f"digits relu + {o}" for o in ("adagrad", "rmsprop", "adam")
    ]
    assert page.locator("select[name=metric]").input_value() == "val_accuracy"
    for line in lines:
        history = wait_until_finished(http, line["key"])["history"]
        assert line["ys"] == [row["val_accuracy"] for row in history]
    page.wait_for_function("document.querySelectorAll('table.compare [data-status=succeeded]').length === 6")
    page.screenshot(path=shots / "compare.png", full_page=True)


@pytest.mark.slow
def test_a_drawn_digit_is_predicted_and_shown_as_bars(
    page: Page, http: httpx.Client, digits_model: dict[str, Any], shots: Path
) -> None:
    model_id = digits_model["model_id"]
    page.goto(f"/#/predict?model={model_id}")
    pad = page.locator("canvas.draw")
    box = pad.bounding_box()
    assert box is not None
    # A "7": a bar across the top, then a stroke down to the bottom left.
    strokes = [(0.25, 0.15), (0.75, 0.15), (0.45, 0.85)]
    page.mouse.move(box["x"] + strokes[0][0] * box["width"], box["y"] + strokes[0][1] * box["height"])
    page.mouse.down()
    for x, y in strokes[1:]:
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=12)
    page.mouse.up()
    page.locator(".bar").nth(9).wait_for()

    shown = page.evaluate("window.trainserve.lastPrediction")
    instance = np.array(shown["instance"])
    assert instance.shape == (8, 8)  # the model's input_shape, in the digits' units 0–16
    assert instance.min() >= 0
    assert 8 < instance.max() <= 16
    answer = http.post("/predict", json={"model_id": model_id, "instances": [shown["instance"]]}).json()
    bars = page.locator(".bar").evaluate_all("bars => bars.map(b => Number(b.dataset.prob))")
    assert bars == pytest.approx(answer["predictions"][0], abs=1e-6)
    assert page.locator(".predicted").inner_text() == str(answer["classes"][0])
    assert page.locator(".bar.best").get_attribute("data-class") == str(answer["classes"][0])
    page.screenshot(path=shots / "predict.png", full_page=True)

    # An uploaded image: the first digit of the dataset, drawn large, is read back close to its own 8×8 values.
    sample = http.get("/datasets/digits/samples?n=1").json()["samples"][0]
    pixels = (np.array(sample["x"], dtype=np.float64) * 255 / 16).astype(np.uint8)
    image = io.BytesIO()
    Image.fromarray(pixels).resize((160, 160), Image.Resampling.NEAREST).save(image, format="PNG")
    page.evaluate("window.trainserve.lastPrediction = null")
    page.locator("input[name=image]").set_input_files(
        files={"name": "digit.png", "mimeType": "image/png", "buffer": image.getvalue()}
    )
    page.wait_for_function("window.trainserve.lastPrediction !== null")
    read = np.array(page.evaluate("window.trainserve.lastPrediction.instance"))
    assert np.abs(read - np.array(sample["x"])).mean() < 1.0
    assert page.locator(".predicted").inner_text() == str(sample["y"])


@pytest.mark.slow
def test_the_model_page_shows_the_summary_table(page: Page, digits_model: dict[str, Any], shots: Path) -> None:
    page.goto(f"/#/models/{digits_model['model_id']}")
    page.locator("table.summary tfoot").wait_for()
    assert page.locator("h1").inner_text() == "손글씨 숫자 모델"
    layers = page.locator("table.summary tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.layer, Number(r.querySelector('[data-params]').dataset.params)])"
    )
    assert layers == [["flatten", 0], ["hidden", 6500], ["output", 1010]]
    assert page.locator("[data-total]").inner_text() == "7,510"
    assert page.locator("[data-trainable]").inner_text() == "7,510"
    page.screenshot(path=shots / "model.png", full_page=True)


@pytest.mark.slow
def test_the_datasets_page_shows_sample_images(page: Page, http: httpx.Client, shots: Path) -> None:
    page.goto("/#/datasets")
    page.locator("tr[data-dataset-id=digits]").wait_for()
    # digits' samples come as numbers: the page draws them.
    page.locator(".dataset-samples .sample canvas").nth(15).wait_for()
    page.screenshot(path=shots / "datasets.png", full_page=True)

    uploaded = http.post("/datasets", files={"file": ("색깔.zip", images_zip(per_class=3))}).json()
    page.goto(f"/#/datasets/{uploaded['dataset_id']}")
    images = page.locator(".dataset-samples .sample img[src^='data:image/png;base64,']")
    images.nth(8).wait_for()
    assert images.count() == 9
    page.wait_for_function(
        "[...document.querySelectorAll('.dataset-samples .sample img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert set(images.evaluate_all("images => images.map(i => i.naturalWidth)")) == {64}  # resized at upload
    assert "색깔" in page.locator(".dataset-samples h2").inner_text()
    page.screenshot(path=shots / "datasets_upload.png", full_page=True)


@pytest.mark.slow
def test_early_stopping_is_shown_on_the_curves(page: Page, http: httpx.Client, shots: Path) -> None:
    body = chapter_request(epochs=20)
    # No epoch after the first improves val_loss by 10: patience 2 stops at the third, the first is published.
    body["fit"]["callbacks"] = [
        {"type": "early_stopping", "patience": 2, "min_delta": 10.0, "restore_best_weights": True}
    ]
    job = wait_until_finished(http, http.post("/train", json=body).json()["job_id"])
    assert job["status"] == "succeeded", job
    page.goto(f"/#/jobs/{job['job_id']}")
    stopped = page.locator("[data-stop-reason]")
    stopped.wait_for()
    assert stopped.get_attribute("data-stop-reason") == "3"
    assert stopped.inner_text().startswith("at epoch 3 of 20: early_stopping: val_loss did not improve by more than 10")
    page.locator("canvas[data-chart=loss][data-best-epoch='1']").wait_for()
    best = page.evaluate(
        "window.trainserve.charts.loss.data.datasets.find(d => d.key === 'best').data.map(p => [p.x, p.y])"
    )
    assert best == [[1, pytest.approx(job["history"][0]["val_loss"], abs=1e-9)]]
    assert page.locator("canvas[data-chart=loss]").get_attribute("data-points") == "7"  # 3 train, 3 val, the star
    page.screenshot(path=shots / "early_stopping.png", full_page=True)


@pytest.fixture(scope="module")
def cnn_model(http: httpx.Client) -> dict[str, Any]:
    """The book's 8-2 CNN, small, on digits as (8, 8, 1) images."""
    body = small_cnn_request()
    job = wait_until_finished(http, http.post("/train", json=body).json()["job_id"])
    assert job["status"] == "succeeded", job
    model: dict[str, Any] = http.get(f"/models/{job['model_id']}").json()
    return model


@pytest.mark.slow
def test_a_cnns_filters_and_a_drawn_digits_feature_maps(
    page: Page, http: httpx.Client, cnn_model: dict[str, Any], shots: Path
) -> None:
    model_id = cnn_model["model_id"]
    page.goto(f"/#/models/{model_id}")
    page.wait_for_function("window.trainserve.inside && window.trainserve.inside.ready === true")
    nodes = page.locator(".graph .node").evaluate_all("nodes => nodes.map(n => n.dataset.node)")
    assert nodes == ["input", "reshape", "conv2d", "max_pooling2d", "conv2d_1", "flatten", "dense"]
    assert "(None, 4, 4, 8) → output (None, 4, 4, 16)" in page.locator(".graph [data-node=conv2d_1]").inner_text()

    for layer, filters in (("conv2d", 8), ("conv2d_1", 16)):
        url = f"/models/{model_id}/layers/{layer}/weights"
        for untrained, query in (("false", {}), ("true", {"untrained": "true", "seed": "42"})):
            expected = [image["png"] for image in http.get(url, params=query).json()["images"]]
            shown = page.locator(f".filter-row[data-layer={layer}] .filters[data-untrained={untrained}] img")
            assert shown.evaluate_all("images => images.map(i => i.src)") == expected
            assert len(expected) == filters

    def maps_equal_the_apis() -> dict[str, Any]:
        state: dict[str, Any] = page.evaluate("window.trainserve.inside.activations")
        answer = http.post(
            f"/models/{model_id}/activations", json={"instance": state["instance"], "layers": ["conv2d", "conv2d_1"]}
        ).json()
        for output in answer["outputs"]:
            shown = page.locator(f".maps[data-layer={output['layer']}] img")
            assert shown.evaluate_all("images => images.map(i => i.src)") == [i["png"] for i in output["images"]]
        return state

    page.locator("button.sample-choice[data-sample='0']").click()
    page.wait_for_function(
        "window.trainserve.inside.activations && window.trainserve.inside.activations.source === 'sample 0'"
    )
    page.locator(".maps[data-layer=conv2d_1] img").nth(15).wait_for()
    state = maps_equal_the_apis()
    assert state["instance"] == http.get("/datasets/digits/samples?n=1").json()["samples"][0]["x"]

    pad = page.locator("canvas.draw")
    box = pad.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.15 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.85 * box["height"], steps=12)  # a "1"
    page.mouse.up()
    page.wait_for_function("window.trainserve.inside.activations.source === 'drawing'")
    state = maps_equal_the_apis()
    assert np.array(state["instance"]).shape == (8, 8)
    page.screenshot(path=shots / "inside_cnn.png", full_page=True)
