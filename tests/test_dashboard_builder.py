"""The "New job" page's model builder, driven in a real headless Chromium against the API served by uvicorn with API
keys, and the session's Celery worker: the chapter's model put together by clicking (79,510 parameters on
Fashion-MNIST's 28×28 images, 7,510 on the 8×8 digits), the totals coming from the preview as it is edited, a wrong
value shown at its field and fixed, layers reordered and removed with the summary following, the request edited on
the JSON tab and taken back, then trained, its page following it to the end.

Screenshots go where tests/test_dashboard.py puts its own (`$TRAINSERVE_SCREENSHOTS`, else a temporary directory).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bench.processes import serving
from service.embedded import free_port
from service.settings import Settings
from tests import test_dashboard
from tests.conftest import WorkerProcess, settings_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

pytestmark = pytest.mark.slow

# The dashboard tests' own fixtures: the browser and the screenshots' directory.
browser = test_dashboard.browser
shots = test_dashboard.shots

KEY = "builder-key"
JOB_TIMEOUT_MS = test_dashboard.JOB_TIMEOUT_MS
PREVIEW = "/train?dry_run=true"


@pytest.fixture(scope="module")
def keyed_url(settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API as `trainserve api` serves it with an API key set (the session's database, queue and worker)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "api", "--port", str(port)]
    env = settings_env(settings) | {"TRAINSERVE_API_KEYS": KEY}
    with serving(command, env, tmp_path_factory.mktemp("keyed-api") / "api.log", f"{url}/healthz"):
        yield url


@pytest.fixture(scope="module")
def http(keyed_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed_url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def _expected(response: Response) -> bool:
    """The refusals the page is meant to meet: the previews of what is being edited (422), and the API's answers
    before the key is typed in (401)."""
    if response.status == 422 and response.request.method == "POST" and response.url.endswith(PREVIEW):
        return True
    return response.status == 401 and "authorization" not in response.request.headers


def _logged(text: str) -> bool:
    """The console errors of those refusals, and the router's of the page it could not show without a key."""
    return "status of 422" in text or "status of 401" in text or "needs an API key" in text


@pytest.fixture
def page(browser: Browser, keyed_url: str) -> Iterator[Page]:
    """A fresh page that fails the test on any error but those expected."""
    with test_dashboard.watched_page(browser, keyed_url, refused=_expected, logged=_logged) as opened:
        yield opened


def settled(page: Page) -> str:
    """The preview's state once the edits so far have been checked: ok, invalid or failed."""
    page.wait_for_function("window.trainserve.builder && window.trainserve.builder.state !== 'pending'")
    state: str = page.evaluate("window.trainserve.builder.state")
    return state


def total(page: Page) -> str:
    assert settled(page) == "ok", page.evaluate("window.trainserve.builder.problems")
    return page.locator("[data-preview-total]").inner_text()


def summary_rows(page: Page) -> list[list[Any]]:
    rows: list[list[Any]] = page.locator(".preview table.summary tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.layer, r.children[1].textContent, Number(r.querySelector('[data-params]')"
        ".dataset.params)])"
    )
    return rows


def add_layer(page: Page, kind: str) -> None:
    page.locator("select[name=add-layer]").select_option(kind)
    page.get_by_role("button", name="Add layer").click()


def field_error(page: Page, path: str) -> str:
    slot = page.locator(f'[data-error-for="{path}"]')
    slot.wait_for()
    return slot.inner_text()


def test_the_chapters_model_built_by_clicking_then_trained(page: Page, http: httpx.Client, shots: Path) -> None:
    # With API keys set, the page asks for one, and works once it is given.
    page.goto("/#/new")
    key = page.locator("#api-key input")
    key.wait_for()
    key.fill(KEY)
    page.locator("#api-key button").click()

    # It starts from the chapter's model on digits, its summary from the preview.
    assert total(page) == "7,510"
    assert page.locator("select[name=example]").input_value() == "digits_sigmoid"
    assert summary_rows(page) == [
        ["flatten", "(None, 64)", 0],
        ["hidden", "(None, 100)", 6_500],
        ["output", "(None, 10)", 1_010],
    ]

    # An empty model on Fashion-MNIST: Flatten → Dense(100, sigmoid) → Dense(10, softmax), by clicking.
    page.locator("select[name=example]").select_option("empty")
    assert settled(page) == "invalid"
    assert "at least 1 item" in field_error(page, "model.layers")
    page.locator("select[name=dataset]").select_option(label="fashion_mnist")
    assert page.locator("[data-path='model.input_shape']").inner_text() == "(28, 28)"
    assert page.locator("input[name='dataset.rescale']").input_value() == str(1 / 255)
    add_layer(page, "flatten")
    add_layer(page, "dense")
    # The third by keyboard alone: its type chosen in the list, then Enter on the button.
    page.locator("select[name=add-layer]").focus()
    page.keyboard.press("Home")  # the list's first type (input is not offered: the dataset gives the input)
    page.keyboard.press("ArrowDown")
    assert page.locator("select[name=add-layer]").input_value() == "dense"
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.locator("li.layer").count() == 3
    assert settled(page) == "invalid"
    assert field_error(page, "model.layers[1].units") == "field required"
    page.locator("input[name='model.layers[1].units']").fill("100")
    page.locator("select[name='model.layers[1].activation']").select_option("sigmoid")
    page.locator("input[name='model.layers[2].units']").fill("10")
    page.locator("select[name='model.layers[2].activation']").select_option("softmax")
    assert total(page) == "79,510"
    assert summary_rows(page) == [
        ["flatten", "(None, 784)", 0],
        ["dense", "(None, 100)", 78_500],
        ["dense_1", "(None, 10)", 1_010],
    ]
    assert page.locator("[data-layer-out='1']").inner_text() == "dense → (None, 100) · 78,500 params"
    request = page.evaluate("window.trainserve.builder.request")
    answer = http.post(PREVIEW, json=request).json()
    assert page.locator(".preview pre").text_content() == answer["text"]
    page.screenshot(path=shots / "builder_fashion_mnist.png", full_page=True)

    # The same model on the 8×8 digits.
    page.locator("select[name=dataset]").select_option(label="digits")
    assert total(page) == "7,510"
    assert page.locator("[data-path='model.input_shape']").inner_text() == "(8, 8)"
    assert page.locator("input[name='dataset.rescale']").input_value() == "0.0625"

    # A wrong value is shown at its field, and goes when it is fixed.
    units = page.locator("input[name='model.layers[2].units']")
    units.fill("11")
    assert settled(page) == "invalid"
    assert field_error(page, "model.layers[2].units") == (
        "the last layer has 11 units but dataset 'digits' has 10 classes; set units to 10"
    )
    assert units.get_attribute("aria-invalid") == "true"
    assert page.locator("[data-preview-state]").inner_text() == "1 problem, each shown at its field."
    assert page.locator("[data-problems] li").count() == 0, "every problem is at its field"
    page.screenshot(path=shots / "builder_error.png", full_page=True)
    units.fill("0")
    assert settled(page) == "invalid"
    assert field_error(page, "model.layers[2].units") == "Input should be greater than or equal to 1 (received 0)"
    units.fill("10")
    assert total(page) == "7,510"
    assert page.locator("[data-error-for='model.layers[2].units']").is_hidden()
    assert units.get_attribute("aria-invalid") is None

    # Reordered: Dense(100) first works on each row of 8 (8 × 100 + 100), then the summary follows it back.
    page.get_by_role("button", name="Move layer 2 up").click()
    assert total(page) == "8,910"
    assert [row[:2] for row in summary_rows(page)] == [
        ["dense", "(None, 8, 100)"],
        ["flatten", "(None, 800)"],
        ["dense_1", "(None, 10)"],
    ]
    # The focus stays on the moved layer's buttons: Enter moves it back down.
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Move layer 1 down"
    page.keyboard.press("Enter")
    assert total(page) == "7,510"

    # Removed, added again at the end, and moved into place.
    page.get_by_role("button", name="Remove layer 2").click()
    assert total(page) == "650"
    assert [row[0] for row in summary_rows(page)] == ["flatten", "dense"]
    add_layer(page, "dense")
    page.locator("input[name='model.layers[2].units']").fill("100")
    page.locator("select[name='model.layers[2].activation']").select_option("sigmoid")
    page.get_by_role("button", name="Move layer 3 up").click()
    page.locator("select[name='model.layers[2].activation']").select_option("softmax")
    page.locator("select[name='model.layers[1].activation']").select_option("sigmoid")
    assert total(page) == "7,510"
    assert [row[2] for row in summary_rows(page)] == [0, 6_500, 1_010]

    # The JSON tab shows the request the builder makes; edited there, the form takes it back.
    page.get_by_role("tab", name="JSON").click()
    text = page.locator("textarea[name=request]").input_value()
    body = json.loads(text)
    assert body["model"] == {
        "input_shape": [8, 8],
        "layers": [
            {"type": "flatten"},
            {"type": "dense", "units": 100, "activation": "sigmoid"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ],
    }
    assert body["dataset"]["name"] == "digits"
    assert body == page.evaluate("window.trainserve.builder.request")
    body["name"] = "빌더 digits"
    body["model"]["layers"][1]["units"] = 50
    page.locator("textarea[name=request]").fill(json.dumps(body, ensure_ascii=False))
    assert total(page) == "3,760"
    page.get_by_role("tab", name="Builder").click()
    assert page.locator("input[name='model.layers[1].units']").input_value() == "50"
    assert page.locator("input[name=name]").input_value() == "빌더 digits"
    assert total(page) == "3,760"
    # A request the form cannot show stays on the JSON tab, which says why.
    page.get_by_role("tab", name="JSON").click()
    body["model"]["layers"].insert(0, {"type": "input", "shape": [8, 8]})
    page.locator("textarea[name=request]").fill(json.dumps(body, ensure_ascii=False))
    page.get_by_role("tab", name="Builder").click()
    assert "takes the model's input from the dataset" in page.locator("[data-json-problem]").inner_text()
    assert page.locator("textarea[name=request]").is_visible()
    page.screenshot(path=shots / "builder_json.png", full_page=True)
    del body["model"]["layers"][0]
    body["model"]["layers"][1]["units"] = 100
    page.locator("textarea[name=request]").fill(json.dumps(body, ensure_ascii=False))
    page.get_by_role("tab", name="Builder").click()
    assert page.locator("[data-json-problem]").inner_text() == ""
    assert total(page) == "7,510"

    # Trained: two epochs, then the job's page follows it to the end.
    page.locator("input[name='fit.epochs']").fill("2")
    assert total(page) == "7,510"
    page.screenshot(path=shots / "builder_digits.png", full_page=True)
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.locator("h1 [data-status=succeeded]").wait_for(timeout=JOB_TIMEOUT_MS)
    assert page.locator("h1").inner_text().startswith("빌더 digits")
    job = http.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert len(job["history"]) == 2
    layers = job["spec"]["model"]["layers"]
    assert [(layer["type"], layer.get("units"), layer.get("activation")) for layer in layers] == [
        ("flatten", None, None),
        ("dense", 100, "sigmoid"),
        ("dense", 10, "softmax"),
    ]
    summary = http.get(f"/models/{job['model_id']}/summary").json()
    assert summary["total_params"] == 7_510
    assert [layer["name"] for layer in summary["layers"]] == ["flatten", "dense", "dense_1"]
    page.screenshot(path=shots / "builder_trained.png", full_page=True)
