// Several jobs' curves on one chart, as the chapter compares SGD, momentum, Nesterov, Adagrad, RMSprop and Adam:
// one line per job for the chosen metric, drawn live while they train.

import { api, followJob } from "../api.js";
import { addPoint, lineChart, redraw, series } from "../charts.js";
import { badge, el, errorBox, fmt, when } from "../ui.js";
import { optimizerName } from "./job.js";

const PREFERRED = ["val_accuracy", "accuracy", "val_loss", "loss"];
const OPTIMIZER_EXAMPLES = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"];

export async function queueOptimizerComparison(epochs) {
  const examples = (await api("/examples")).data;
  const ids = [];
  for (const name of OPTIMIZER_EXAMPLES) {
    const example = examples.find((e) => e.key === `digits_relu_${name}`);
    const request = structuredClone(example.request);
    if (epochs) request.fit.epochs = epochs;
    ids.push((await api("/train", { method: "POST", body: request })).job_id);
  }
  return ids;
}

async function picker(view) {
  const list = await api("/jobs?limit=100&history=last");
  const chosen = new Set();
  const go = el("button", { class: "primary", disabled: true, text: "Compare" });
  go.addEventListener("click", () => (location.hash = `#/compare?jobs=${[...chosen].join(",")}`));
  const epochs = el("input", { type: "number", min: 1, max: 1000, value: 20, style: "width:80px" });
  const problem = el("div");
  const queue = el("button", { text: "Train the chapter's six optimizers on digits" });
  queue.addEventListener("click", async () => {
    queue.disabled = true;
    try {
      const ids = await queueOptimizerComparison(Number(epochs.value));
      location.hash = `#/compare?jobs=${ids.join(",")}`;
    } catch (error) {
      problem.replaceChildren(errorBox(error));
      queue.disabled = false;
    }
  });
  const rows = list.data.map((job) => {
    const box = el("input", { type: "checkbox", "data-job-id": job.job_id });
    box.addEventListener("change", () => {
      if (box.checked) chosen.add(job.job_id);
      else chosen.delete(job.job_id);
      go.disabled = chosen.size === 0;
    });
    return el(
      "tr",
      {},
      el("td", {}, box),
      el("td", { text: job.name || job.job_id }),
      el("td", { text: optimizerName(job.spec) }),
      el("td", {}, badge(job.status)),
      el("td", { class: "small muted", text: when(job.created_at) }),
    );
  });
  view.append(
    el("h1", {}, "Compare jobs"),
    el("p", { class: "muted" }, "Pick jobs to overlay their curves, or train the chapter's optimizer comparison: the relu model on digits with SGD, momentum, Nesterov, Adagrad, RMSprop and Adam."),
    el("div", { class: "toolbar" }, queue, el("label", { class: "small" }, "epochs ", epochs), go),
    problem,
    el("table", {}, el("thead", {}, el("tr", {}, ["", "Name", "Optimizer", "Status", "Created"].map((t) => el("th", { text: t })))), el("tbody", {}, rows)),
  );
  return null;
}

export async function render(view, { query, isCurrent }) {
  const ids = (query.get("jobs") || "").split(",").filter((id) => /^[0-9a-f]+$/.test(id));
  if (!ids.length) return picker(view);
  const jobs = await Promise.all(ids.map((id) => api(`/jobs/${id}`)));
  if (!isCurrent()) return null;
  const histories = new Map(ids.map((id) => [id, new Map()]));
  const attempts = new Map();
  let metric = query.get("metric") || null;

  const select = el("select", { name: "metric", "aria-label": "metric" });
  select.addEventListener("change", () => {
    metric = select.value;
    draw();
  });
  const canvas = el("canvas", { "data-chart": "compare", "data-points": "0" });
  const body = el("tbody");
  view.append(
    el("h1", {}, "Compare jobs"),
    el("div", { class: "toolbar" }, el("label", { class: "small" }, "metric ", select), el("a", { href: "#/compare", class: "button", text: "Choose other jobs" })),
    el("div", { class: "panel" }, el("div", { class: "chart-box tall" }, canvas)),
    el(
      "table",
      { class: "compare" },
      el("thead", {}, el("tr", {}, ["Job", "Optimizer", "Status", "Epochs", "Last", "Best", "Held-out"].map((t) => el("th", { text: t })))),
      body,
    ),
  );
  const chart = lineChart("compare", canvas, { title: "", yTitle: "" });

  function metrics() {
    const names = new Set();
    for (const history of histories.values()) {
      for (const row of history.values()) {
        Object.keys(row).forEach((key) => key !== "epoch" && key !== "attempt" && names.add(key));
      }
    }
    return [...names].sort((a, b) => {
      const ia = PREFERRED.indexOf(a) < 0 ? 99 : PREFERRED.indexOf(a);
      const ib = PREFERRED.indexOf(b) < 0 ? 99 : PREFERRED.indexOf(b);
      return ia - ib || a.localeCompare(b);
    });
  }

  function draw() {
    const names = metrics();
    if (!metric || (names.length && !names.includes(metric))) metric = names[0] || null;
    if ([...select.options].map((o) => o.value).join() !== names.join()) {
      select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    }
    if (metric) select.value = metric;
    chart.options.plugins.title = { display: Boolean(metric), text: metric ? `${metric} per epoch` : "" };
    chart.options.scales.y.title = { display: Boolean(metric), text: metric || "" };
    const lower = metric && metric.endsWith("loss");
    body.replaceChildren();
    jobs.forEach((job, index) => {
      const dataset = series(chart, job.job_id, { label: job.name || job.job_id.slice(0, 8), colourIndex: index });
      dataset.data = [];
      const values = [];
      for (const row of [...histories.get(job.job_id).values()].sort((a, b) => a.epoch - b.epoch)) {
        if (metric && typeof row[metric] === "number") {
          addPoint(chart, dataset, row.epoch, row[metric]);
          values.push(row[metric]);
        }
      }
      const best = values.length ? (lower ? Math.min(...values) : Math.max(...values)) : null;
      const evaluation = job.evaluation ? Object.entries(job.evaluation).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ") : "–";
      body.append(
        el(
          "tr",
          { "data-job-id": job.job_id },
          el("td", {}, el("span", { style: `color:${dataset.borderColor}`, text: "● " }), el("a", { href: `#/jobs/${job.job_id}`, text: job.name || job.job_id })),
          el("td", { text: optimizerName(job.spec) }),
          el("td", {}, badge(job.status)),
          el("td", { class: "num", text: `${values.length}/${job.progress.epochs}` }),
          el("td", { class: "num", text: fmt(values[values.length - 1]) }),
          el("td", { class: "num", text: fmt(best) }),
          el("td", { class: "small", text: evaluation }),
        ),
      );
    });
    redraw(chart);
  }

  let pending = null;
  function drawSoon() {
    if (!pending) pending = requestAnimationFrame(() => ((pending = null), draw()));
  }
  const stops = jobs.map((job, index) =>
    followJob(job.job_id, {
      onEpoch: (row) => {
        const history = histories.get(job.job_id);
        if (attempts.has(job.job_id) && attempts.get(job.job_id) !== row.attempt) history.clear();
        attempts.set(job.job_id, row.attempt);
        history.set(row.epoch, row);
        drawSoon();
      },
      onStatus: async (update) => {
        jobs[index] = { ...jobs[index], ...update };
        if (["succeeded", "failed", "cancelled"].includes(update.status)) jobs[index] = await api(`/jobs/${job.job_id}`);
        drawSoon();
      },
      onError: (error) => view.prepend(errorBox(error)),
    }),
  );
  draw();
  return () => {
    stops.forEach((stop) => stop());
    if (pending) cancelAnimationFrame(pending);
  };
}
