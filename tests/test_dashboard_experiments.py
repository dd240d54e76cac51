"""The dashboard's experiment pages, driven in a real headless Chromium against the API served by uvicorn with the
session's Celery worker: an experiment started from the list's form (a refused one showing its error beside the
box), its leaderboard filling and re-sorting live from the event stream as trials finish, sortable by any column,
every trial's curve overlaid, a pruned trial's cut short, and the trials in parallel coordinates.

Screenshots go where tests/test_dashboard.py puts its own (`$TRAINSERVE_SCREENSHOTS`, else a temporary directory).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from service.examples import experiment_examples
from tests import test_dashboard
from tests.conftest import chapter_request

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

pytestmark = pytest.mark.slow

# The dashboard tests' own fixtures: the browser, an HTTP client of the live API, the screenshots' directory.
browser = test_dashboard.browser
http = test_dashboard.http
shots = test_dashboard.shots

EXPERIMENT_TIMEOUT_S = 150
OPTIMIZER = "compile.optimizer"
RATE = "compile.optimizer.learning_rate"
# Four of the chapter's six optimizers (SGD, momentum, Nesterov, Adam: two of them objects, and a clear worst
# first), as the leaderboard writes them, in the order their labels sort: the two SGD variants last, in whichever
# order the browser's collation puts a comma and a parenthesis.
KEPT = (0, 1, 2, 5)
OPTIMIZER_LABELS = ["adam", "sgd"]
SGD_VARIANTS = {"sgd (learning_rate 0.01, momentum 0.9)", "sgd (learning_rate 0.01, momentum 0.9, nesterov)"}
ROWS = "[...document.querySelectorAll('table.leaderboard tbody tr[data-trial]')]"


def _refused_on_purpose(response: Response) -> bool:
    """The one refusal the first test asks for: an invalid experiment posted from the form."""
    return response.status == 422 and response.request.method == "POST" and response.url.endswith("/experiments")


@pytest.fixture
def page(browser: Browser, live_url: str) -> Iterator[Page]:
    """A fresh page that fails the test on any error but the one refusal the form is meant to show."""
    with test_dashboard.watched_page(
        browser, live_url, refused=_refused_on_purpose, logged=lambda text: "status of 422" in text
    ) as opened:
        yield opened


def the_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("window.trainserve.experiment")
    return state


def wait_until_settled(page: Page) -> None:
    """Until the page has seen the experiment end and drawn it whole."""
    page.wait_for_function(
        "() => window.trainserve.experiment && window.trainserve.experiment.settled === true",
        timeout=EXPERIMENT_TIMEOUT_S * 1000,
    )


def by_objective(experiment: dict[str, Any]) -> list[int]:
    """The trials as the leaderboard ranks them: complete ones best first, then pruned, then the rest by number."""
    sign = -1 if experiment["objective"]["direction"] == "max" else 1

    def key(trial: dict[str, Any]) -> tuple[int, float, int]:
        scored = trial["objective"] is not None
        group = 0 if scored and trial["state"] == "complete" else 1 if scored and trial["state"] == "pruned" else 2
        return group, sign * trial["objective"] if scored else 0.0, trial["number"]

    return [trial["number"] for trial in sorted(experiment["trials"], key=key)]


def history_of(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = http.get(f"/jobs/{job_id}").json()["history"]
    return history


def test_an_experiment_started_from_the_form_fills_and_reorders_its_leaderboard_live(
    page: Page, http: httpx.Client, shots: Path
) -> None:
    page.goto("/#/experiments")
    assert page.locator("nav a[data-nav=experiments]").get_attribute("class") == "active"
    box = page.locator("textarea[name=experiment]")
    # The form starts from the six-optimizer example, as the OpenAPI document gives it.
    assert json.loads(box.input_value()) == experiment_examples()["experiment_optimizers"]

    body = experiment_examples()["experiment_optimizers"]
    body["max_parallel"] = 0
    box.fill(json.dumps(body, ensure_ascii=False, indent=2))
    page.get_by_role("button", name="Start experiment").click()
    refusal = page.locator(".start-experiment [data-problem] [role=alert]")
    refusal.wait_for()
    assert "max_parallel" in refusal.inner_text()
    page.screenshot(path=shots / "experiments_refused.png", full_page=True)

    body["max_parallel"] = 2
    body["base"]["fit"]["epochs"] = 2
    choices = body["space"][OPTIMIZER]["values"]
    body["space"][OPTIMIZER]["values"] = [choices[i] for i in KEPT]
    body["name"] = "대시보드: four optimizers"
    box.fill(json.dumps(body, ensure_ascii=False, indent=2))
    page.get_by_role("button", name="Start experiment").click()
    page.wait_for_url(re.compile(r"#/experiments/[0-9a-f]{32}$"))
    experiment_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function("() => window.trainserve.experiment && window.trainserve.experiment.ready === true")

    # The leaderboard as the test sees it in the page while the trials run: rows in order, each with its state.
    assert page.locator("button[data-action=cancel]").is_visible(), "a running experiment can be cancelled"
    seen: list[tuple[tuple[int, str], ...]] = []
    deadline = time.monotonic() + EXPERIMENT_TIMEOUT_S
    while time.monotonic() < deadline:
        rows = tuple(map(tuple, page.evaluate(f"{ROWS}.map(r => [Number(r.dataset.trial), r.dataset.state])")))
        if not seen or rows != seen[-1]:
            seen.append(rows)
        if page.evaluate("window.trainserve.experiment.settled"):
            break
        time.sleep(0.05)
    wait_until_settled(page)
    state = the_state(page)
    assert state["transport"] == "events"
    assert state["curves"]["fetched"] >= 2, "the curves were drawn while the trials trained, not only at the end"

    experiment: dict[str, Any] = http.get(f"/experiments/{experiment_id}").json()
    assert experiment["status"] == "succeeded", experiment
    trials = {trial["number"]: trial for trial in experiment["trials"]}
    assert len(trials) == len(KEPT)
    assert {trial["state"] for trial in trials.values()} == {"complete"}

    # Rows arrived as trials were asked (two at a time at first), and the order changed while trials were still
    # running: a finished trial moved above one numbered before it.
    orders = [entry["order"] for entry in state["orders"]]
    assert len(orders[0]) <= 2, state["orders"][0]
    assert len(seen[0]) < len(KEPT), seen[0]
    assert len({tuple(order) for order in orders}) >= 3, orders
    live = [entry for entry in state["orders"] if entry["status"] == "running"]
    assert any(entry["order"] != sorted(entry["order"]) for entry in live), state["orders"]
    assert any([number for number, _ in rows] != sorted(number for number, _ in rows) for rows in seen), seen
    # The test saw the same: some rows ended while others still ran, and states in the rows changed live.
    assert any({"complete"} < {s for _, s in rows} for rows in seen), seen

    final = by_objective(experiment)
    assert final != sorted(final), "the best optimizers are not the first trials"
    assert state["order"] == final
    assert page.evaluate(f"{ROWS}.map(r => Number(r.dataset.trial))") == final
    assert page.locator("table.leaderboard th[data-column=objective]").get_attribute("aria-sort") == "descending"
    assert page.locator(f"table.leaderboard tr.best[data-trial='{experiment['best']['number']}']").count() == 1

    # The header: status, objective, counts, the best trial with its job and model.
    assert page.locator("h1 [data-status=succeeded]").count() == 1
    assert page.locator("[data-objective]").get_attribute("data-objective") == "accuracy max evaluation"
    assert page.locator(".facts .counts [data-state=complete]").get_attribute("data-count") == str(len(KEPT))
    best = experiment["best"]
    best_links = page.locator(f"[data-best-trial='{best['number']}'] a")
    assert best_links.evaluate_all("links => links.map(a => a.getAttribute('href'))") == [
        f"#/jobs/{best['job_id']}",
        f"#/models/{best['model_id']}",
    ]
    assert page.locator("button[data-action=cancel]").is_hidden()

    # Curves: one per trial, as many points as its history, the best drawn thick.
    assert state["curves"]["metric"] == "val_accuracy"
    options = page.locator("select[name=metric] option").evaluate_all("options => options.map(o => o.value)")
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(options)
    histories = {number: history_of(http, trial["job_id"]) for number, trial in trials.items()}
    lines = {line["number"]: line for line in state["curves"]["lines"]}
    assert sorted(lines) == sorted(trials)
    for number, line in lines.items():
        assert line["points"] == len(histories[number]) == 2
        assert line["ys"] == [row["val_accuracy"] for row in histories[number]]
        assert line["best"] is (number == best["number"])
        assert not line["dashed"]
    page.screenshot(path=shots / "experiment.png", full_page=True)

    page.locator("select[name=metric]").select_option("loss")
    page.wait_for_function("window.trainserve.experiment.curves.metric === 'loss'")
    lines = {line["number"]: line for line in the_state(page)["curves"]["lines"]}
    for number, line in lines.items():
        assert line["ys"] == [row["loss"] for row in histories[number]]

    # Sorting by the optimizer's column: by the labels the cells show, then the other way round.
    header = page.locator(f"table.leaderboard th[data-column='param:{OPTIMIZER}']")
    header.get_by_role("button").click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert page.locator("table.leaderboard th[data-column=objective]").get_attribute("aria-sort") == "none"
    cells = f"{ROWS}.map(r => r.querySelector('[data-column=\"param:{OPTIMIZER}\"]').textContent)"
    ascending = page.evaluate(cells)
    assert ascending[:2] == OPTIMIZER_LABELS
    assert set(ascending[2:]) == SGD_VARIANTS
    assert [trials[n]["params"][OPTIMIZER] for n in the_state(page)["order"]][:2] == ["adam", "sgd"]
    page.screenshot(path=shots / "experiment_sorted.png", full_page=True)
    header.get_by_role("button").click()
    assert header.get_attribute("aria-sort") == "descending"
    assert page.evaluate(cells) == ascending[::-1]
    page.locator("table.leaderboard th[data-column=objective] button").click()
    assert the_state(page)["order"] == final

    # Parallel coordinates: the optimizer as a category axis, the objective's axis; one line per finished trial,
    # through its optimizer's tick, the best at the top of the objective's axis.
    parallel = the_state(page)["parallel"]
    axes = parallel["axes"]
    assert [(axis["key"], axis["kind"]) for axis in axes] == [
        (f"param:{OPTIMIZER}", "category"),
        ("objective", "linear"),
    ]
    assert set(axes[0]["ticks"]) == {*OPTIMIZER_LABELS, *SGD_VARIANTS}
    assert page.locator("svg.parallel path.line").count() == len(parallel["lines"]) == len(KEPT)
    ticks = dict(
        page.locator(f"svg.parallel g[data-axis='param:{OPTIMIZER}'] text.tick-label").evaluate_all(
            "labels => labels.map(l => [l.querySelector('title').textContent, Number(l.getAttribute('y')) - 4])"
        )
    )
    for line in parallel["lines"]:
        trial = trials[line["number"]]
        assert line["objective"] == trial["objective"]
        label = page.locator(f"tr[data-trial='{line['number']}'] [data-column='param:{OPTIMIZER}']").inner_text()
        assert line["points"][0][1] == pytest.approx(ticks[label], abs=0.01)
    top = min(parallel["lines"], key=lambda line: line["points"][1][1])
    assert top["number"] == best["number"]

    page.goto("/#/experiments")
    row = page.locator(f"tr[data-experiment-id='{experiment_id}']")
    row.locator("[data-status=succeeded]").wait_for()
    assert float(row.locator("[data-best]").get_attribute("data-best") or "nan") == best["objective"]
    page.screenshot(path=shots / "experiments.png", full_page=True)


def test_a_pruned_trial_ends_its_curve_where_it_stopped_and_learning_rates_sit_on_a_log_axis(
    page: Page, http: httpx.Client, shots: Path
) -> None:
    """The pruner test's experiment (tests/test_experiments.py), its learning rate a log-scale range: a good rate
    first, then a millionth of it, which the median pruner stops at epoch 2."""
    base = chapter_request(epochs=4)
    base["compile"]["optimizer"] = {"type": "adam"}
    body = {
        "name": "대시보드: a pruned trial",
        "base": base,
        "space": {RATE: {"type": "float", "low": 1e-8, "high": 0.1, "log": True}},
        "search": {"type": "random", "seed": 3},
        "objective": {"metric": "accuracy", "source": "evaluation"},
        "enqueue": [{RATE: 0.01}, {RATE: 1e-8}],
        "max_trials": 2,
        "max_parallel": 1,
        "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
    }
    answer = http.post("/experiments", json=body)
    assert answer.status_code == 202, answer.text
    experiment_id = answer.json()["experiment_id"]
    # Its event stream ends as soon as it opens, as a dropped connection would: the page follows it by polling.
    page.route(
        "**/experiments/*/events", lambda route: route.fulfill(status=200, content_type="text/event-stream", body="")
    )
    page.goto(f"/#/experiments/{experiment_id}")
    wait_until_settled(page)
    page.screenshot(path=shots / "experiment_pruned.png", full_page=True)
    state = the_state(page)
    assert state["transport"] == "polling"
    experiment: dict[str, Any] = http.get(f"/experiments/{experiment_id}").json()
    assert experiment["status"] == "succeeded", experiment
    good, hopeless = experiment["trials"]
    assert good["params"] == {RATE: 0.01}
    assert hopeless["params"] == {RATE: 1e-8}

    # A log axis from 1e-8 to 0.1, a tick per power of ten; each line passes through its own rate's tick.
    axes = state["parallel"]["axes"]
    assert [(axis["key"], axis["kind"]) for axis in axes] == [(f"param:{RATE}", "log"), ("objective", "linear")]
    assert axes[0]["ticks"] == ["1e-8", "1e-7", "1e-6", "1e-5", "1e-4", "0.001", "0.01", "0.1"]
    ticks = dict(
        page.locator(f"svg.parallel g[data-axis='param:{RATE}'] text.tick-label").evaluate_all(
            "labels => labels.map(l => [l.querySelector('title').textContent, Number(l.getAttribute('y')) - 4])"
        )
    )
    lines = {line["number"]: line for line in state["parallel"]["lines"]}
    assert len(lines) == page.locator("svg.parallel path.line").count() == 2
    assert lines[good["number"]]["points"][0][1] == pytest.approx(ticks["0.01"], abs=0.01)
    assert lines[hopeless["number"]]["points"][0][1] == pytest.approx(ticks["1e-8"], abs=0.01)
    assert page.locator(f"tr[data-trial='{hopeless['number']}'] [data-column='param:{RATE}']").inner_text() == "1e-8"

    # The pruned trial: its curve ends at the epoch it was stopped at, dashed with a cross, shorter than the good one.
    assert good["state"] == "complete", good
    assert hopeless["state"] == "pruned", f"the pruner did not stop the hopeless trial: {hopeless}"
    curves = {line["number"]: line for line in state["curves"]["lines"]}
    assert curves[good["number"]]["points"] == len(history_of(http, good["job_id"])) == 4
    assert curves[hopeless["number"]]["points"] == len(history_of(http, hopeless["job_id"])) == 2
    assert curves[hopeless["number"]]["xs"] == [1, 2]
    assert curves[hopeless["number"]]["dashed"]
    assert curves[hopeless["number"]]["marker"] == "crossRot"
    assert not curves[good["number"]]["dashed"]
    assert curves[good["number"]]["best"]
    assert lines[hopeless["number"]]["dashed"]
    assert not lines[good["number"]]["dashed"]
    row = page.locator(f"tr[data-trial='{hopeless['number']}']")
    assert row.get_attribute("data-state") == "pruned"
    assert row.locator("[data-column=stop]").inner_text().startswith("pruned by the median pruner at epoch 2")
    assert state["order"] == by_objective(experiment) == [good["number"], hopeless["number"]]
