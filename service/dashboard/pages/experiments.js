// Experiments, newest first (refreshed every two seconds), and a form to start one from the examples the API's own
// OpenAPI document carries for POST /experiments.

import { api } from "../api.js";
import { badge, el, errorBox, fmt, when } from "../ui.js";

const REFRESH_MS = 2000;
const DEFAULT_EXAMPLE = "experiment_optimizers";
export const TRIAL_STATES = ["complete", "pruned", "running", "queued", "failed", "cancelled", "refused"];

export function counts(byState) {
  const known = TRIAL_STATES.filter((state) => byState[state]);
  const other = Object.keys(byState).filter((state) => !TRIAL_STATES.includes(state));
  const chips = [...known, ...other].map((state) =>
    el("span", { class: `badge ${state}`, "data-state": state, "data-count": byState[state], text: `${byState[state]} ${state}` }),
  );
  return el("span", { class: "counts" }, chips.length ? chips : el("span", { class: "muted", text: "none yet" }));
}

async function examples() {
  // The examples are read where the API documents them, so the form offers exactly what /docs shows.
  const document = await api("/openapi.json");
  const body = (((document.paths || {})["/experiments"] || {}).post || {}).requestBody || {};
  const found = (((body.content || {})["application/json"] || {}).examples || {});
  return Object.entries(found).map(([key, example]) => ({ key, name: example.summary || key, value: example.value }));
}

function startForm(choices, query) {
  const example = el("select", { name: "example", "aria-label": "example experiment" }, choices.map((c) => el("option", { value: c.key, text: c.name })));
  const wanted = query.get("example");
  example.value = choices.some((c) => c.key === wanted) ? wanted : choices.some((c) => c.key === DEFAULT_EXAMPLE) ? DEFAULT_EXAMPLE : (choices[0] || {}).key || "";
  const text = el("textarea", { name: "experiment", rows: 24, spellcheck: "false", "aria-label": "experiment (POST /experiments body)" });
  const problem = el("div", { class: "form-problem", "data-problem": "" });
  const submit = el("button", { class: "primary", type: "submit", text: "Start experiment" });
  function load() {
    const chosen = choices.find((c) => c.key === example.value);
    text.value = chosen ? JSON.stringify(chosen.value, null, 2) : "{}";
    problem.replaceChildren();
  }
  example.addEventListener("change", load);
  const form = el(
    "form",
    { class: "panel start-experiment" },
    el("h2", { text: "Start an experiment" }),
    el("div", { class: "fields" }, el("label", { class: "field" }, "Start from", example), el("a", { href: "/docs#/experiments/create_experiment_experiments_post", class: "small", text: "request reference" })),
    el("div", { class: "beside" }, el("label", { class: "field" }, "Experiment (POST /experiments body)", text), problem),
    el("div", { class: "toolbar", style: "margin-top:12px" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let body;
    try {
      body = JSON.parse(text.value);
    } catch (error) {
      problem.replaceChildren(errorBox({ message: `The experiment is not valid JSON: ${error.message}` }));
      return;
    }
    submit.disabled = true;
    try {
      const created = await api("/experiments", { method: "POST", body });
      location.hash = `#/experiments/${created.experiment_id}`;
    } catch (error) {
      problem.replaceChildren(errorBox(error));
      submit.disabled = false;
    }
  });
  load();
  return form;
}

export async function render(view, { query, isCurrent }) {
  const choices = await examples().catch(() => []);
  if (!isCurrent()) return null;
  const body = el("tbody");
  const errors = el("div");
  const count = el("span", { class: "muted small" });
  view.append(
    el("h1", {}, "Experiments", count),
    el("p", { class: "muted" }, "A search over a train request's fields by JSON path: each trial is a job, the best trial's model is published under the experiment's name."),
    errors,
    el(
      "table",
      { class: "experiments" },
      el("thead", {}, el("tr", {}, ["Name", "Status", "Search", "Trials", "Best objective", "Created"].map((t, i) => el("th", { class: i === 4 ? "num" : "", text: t })))),
      body,
    ),
    startForm(choices, query),
  );

  function row(experiment) {
    const best = experiment.best;
    return el(
      "tr",
      { "data-experiment-id": experiment.experiment_id },
      el("td", {}, el("a", { href: `#/experiments/${experiment.experiment_id}`, text: experiment.name || experiment.experiment_id.slice(0, 8) })),
      el("td", {}, badge(experiment.status)),
      el("td", { text: experiment.search }),
      el("td", {}, counts(experiment.counts), el("span", { class: "small muted", text: ` of ${experiment.max_trials}` })),
      el(
        "td",
        { class: "num", "data-best": best ? best.objective : "" },
        best ? `${experiment.objective.metric} ${fmt(best.objective)} ` : "–",
        best ? el("a", { class: "small", href: `#/jobs/${best.job_id}`, text: `#${best.number}` }) : null,
      ),
      el("td", { class: "small muted", text: when(experiment.created_at) }),
    );
  }

  let timer = null;
  let stopped = false;
  async function refresh() {
    clearTimeout(timer);
    try {
      const list = await api("/experiments?limit=100");
      if (stopped) return;
      errors.replaceChildren();
      body.replaceChildren(...list.data.map(row));
      if (!list.data.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "empty", text: "No experiments yet: start one below." })));
      count.textContent = `${list.count} experiment${list.count === 1 ? "" : "s"}`;
    } catch (error) {
      if (!stopped) errors.replaceChildren(errorBox(error));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
