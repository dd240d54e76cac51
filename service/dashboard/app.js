// The dashboard's router: #/jobs, #/jobs/<id>, #/compare?jobs=a,b, #/experiments, #/experiments/<id>, #/models,
// #/models/<id>, #/predict?model=<id>, #/datasets, #/datasets/<id>, #/new?example=<key>. Each page renders into
// <main> and returns a cleanup function.

import { apiKey, setApiKey } from "./api.js";
import { destroyAll } from "./charts.js";
import { el, errorBox, params } from "./ui.js";
import * as compare from "./pages/compare.js";
import * as datasets from "./pages/datasets.js";
import * as experiment from "./pages/experiment.js";
import * as experiments from "./pages/experiments.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as models from "./pages/models.js";
import * as newJob from "./pages/new_job.js";
import * as predict from "./pages/predict.js";

window.trainserve = window.trainserve || {};
window.trainserve.charts = window.trainserve.charts || {};

const ROUTES = [
  [/^jobs\/([0-9a-f]+)$/, job.render, "jobs"],
  [/^(?:jobs)?$/, jobs.render, "jobs"],
  [/^compare$/, compare.render, "compare"],
  [/^experiments\/([0-9a-f]+)$/, experiment.render, "experiments"],
  [/^experiments$/, experiments.render, "experiments"],
  [/^models\/([0-9a-f]+)$/, models.renderOne, "models"],
  [/^models$/, models.renderList, "models"],
  [/^predict$/, predict.render, "predict"],
  [/^datasets(?:\/([^/]+))?$/, datasets.render, "datasets"],
  [/^new$/, newJob.render, "new"],
];

let cleanup = null;
let generation = 0;

async function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const path = decodeURIComponent(hash.split("?")[0]);
  const query = params(hash);
  if (cleanup) {
    try {
      cleanup();
    } catch (error) {
      console.error(error);
    }
  }
  cleanup = null;
  destroyAll();
  const view = document.getElementById("view");
  view.replaceChildren();
  const current = ++generation;
  const match = ROUTES.map(([pattern, render, nav]) => [path.match(pattern), render, nav]).find(([m]) => m);
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", Boolean(match) && a.dataset.nav === match[2]));
  if (!match) {
    view.append(el("div", { class: "empty" }, "No such page. ", el("a", { href: "#/jobs", text: "Back to the jobs" })));
    return;
  }
  const [m, render] = match;
  try {
    const done = await render(view, { args: m.slice(1), query, isCurrent: () => current === generation });
    if (current === generation) cleanup = done || null;
    else if (done) done();
  } catch (error) {
    console.error(error);
    if (current === generation) view.append(errorBox(error));
  }
}

function setUpKeyForm() {
  const form = document.getElementById("api-key");
  const input = form.querySelector("input");
  input.value = apiKey();
  if (apiKey()) form.hidden = false;
  document.addEventListener("trainserve:unauthorized", () => {
    form.hidden = false;
    input.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    route();
  });
}

setUpKeyForm();
window.addEventListener("hashchange", route);
route();
