// One job, live: its loss and metric curves (train solid, validation dashed) gain a point per finished epoch, read
// from the job's event stream.

import { api, followJob } from "../api.js";
import { addPoint, lineChart, points, redraw, series } from "../charts.js";
import { badge, el, errorBox, fmt, progress, shape, when } from "../ui.js";

const NOT_METRICS = new Set(["epoch", "attempt"]);

export function metricNames(row) {
  return Object.keys(row).filter((key) => !NOT_METRICS.has(key) && !key.startsWith("val_") && typeof row[key] === "number");
}

export function optimizerName(spec) {
  const optimizer = spec && spec.compile ? spec.compile.optimizer : null;
  if (!optimizer || typeof optimizer === "string") return optimizer || "–";
  const options = Object.entries(optimizer).filter(([key]) => key !== "type").map(([key, value]) => `${key}=${value}`);
  return `${optimizer.type}${options.length ? ` (${options.join(", ")})` : ""}`;
}

export async function render(view, { args, isCurrent }) {
  const jobId = args[0];
  let job = await api(`/jobs/${jobId}`);
  if (!isCurrent()) return null;
  const log = (window.trainserve.epochLog = []);

  const title = el("span", { text: job.name || jobId });
  const status = el("span");
  const progressCell = el("span");
  const facts = el("dl", { class: "facts" });
  const problem = el("div");
  const chartsGrid = el("div", { class: "grid2" });
  const historyBody = el("tbody");
  const historyHead = el("tr");
  const cancel = el("button", { text: "Cancel job", "data-action": "cancel" });
  cancel.addEventListener("click", async () => {
    try {
      await api(`/jobs/${jobId}/cancel`, { method: "POST" });
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  });
  view.append(
    el("h1", {}, title, status),
    el("div", { class: "toolbar" }, progressCell, cancel, el("a", { class: "button", href: `#/compare?jobs=${jobId}`, text: "Compare with others" })),
    problem,
    el("div", { class: "panel" }, facts),
    chartsGrid,
    el("h2", {}, "History"),
    el("table", { class: "history" }, el("thead", {}, historyHead), historyBody),
    el("details", {}, el("summary", { text: "Request" }), el("pre", { text: JSON.stringify(job.spec, null, 2) })),
  );

  function showJob() {
    status.replaceChildren(badge(job.status));
    progressCell.replaceChildren(progress(job));
    cancel.hidden = !["queued", "running"].includes(job.status);
    const dataset = job.spec.dataset || {};
    const entries = [
      ["Job", jobId],
      ["Model", job.spec.model.name || "–"],
      ["Input shape", shape(job.spec.model.input_shape)],
      ["Dataset", dataset.name || dataset.id || "–"],
      ["Optimizer", optimizerName(job.spec)],
      ["Loss", job.spec.compile.loss],
      ["Created", when(job.created_at)],
      ["Started", when(job.started_at)],
      ["Finished", when(job.finished_at)],
      ["Attempts", String(job.attempts)],
    ];
    if (job.evaluation) {
      entries.push(["Held-out", Object.entries(job.evaluation).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ")]);
    }
    const training = job.training;
    if (training) {
      if (training.best_epoch) entries.push(["Best epoch", `${training.best_epoch} by ${training.monitor}`]);
      entries.push(["Published epoch", String(training.published_epoch)]);
    }
    const trial = job.trial
      ? [el("dt", { text: "Trial" }), el("dd", {}, el("a", { href: `#/experiments/${job.trial.experiment_id}`, "data-trial": job.trial.number, text: `#${job.trial.number} of an experiment` }))]
      : [];
    const stopped = job.training && job.training.stop_reason ? [el("dt", { text: "Stopped early" }), el("dd", { class: "stop-reason", "data-stop-reason": job.training.stopped_epoch ?? "", text: `at epoch ${job.training.stopped_epoch ?? job.training.epochs_run} of ${job.progress.epochs}: ${job.training.stop_reason}` })] : [];
    facts.replaceChildren(
      ...entries.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]),
      ...trial,
      ...stopped,
      el("dt", { text: "Trained model" }),
      el("dd", {}, job.model_id ? el("a", { href: `#/models/${job.model_id}`, text: job.model_id }) : "–"),
    );
    if (job.model_id) {
      facts.append(el("dt", { text: "" }), el("dd", {}, el("a", { href: `#/predict?model=${job.model_id}`, text: "Try it in the predict playground →" })));
    }
    problem.replaceChildren(...(job.error ? [errorBox({ message: `${job.error.type}: ${job.error.message}` })] : []));
  }
  showJob();

  const charts = {};
  let attempt = null;
  let columns = null;
  function chartFor(metric) {
    if (!charts[metric]) {
      const canvas = el("canvas", { "data-chart": metric, "data-points": "0" });
      chartsGrid.append(el("div", { class: "panel" }, el("div", { class: "chart-box" }, canvas)));
      charts[metric] = lineChart(metric, canvas, { title: metric, yTitle: metric });
    }
    return charts[metric];
  }
  function addEpoch(row) {
    if (attempt !== null && row.attempt !== attempt) {
      // A retried job trains from the first epoch again: start its curves over.
      for (const chart of Object.values(charts)) {
        for (const dataset of chart.data.datasets) dataset.data = [];
      }
      historyBody.replaceChildren();
    }
    attempt = row.attempt;
    const names = metricNames(row);
    names.forEach((metric) => {
      const chart = chartFor(metric);
      addPoint(chart, series(chart, "train", { label: `train ${metric}`, colourIndex: 0 }), row.epoch, row[metric]);
      if (typeof row[`val_${metric}`] === "number") {
        const validation = series(chart, "val", { label: `validation ${metric}`, colourIndex: 1, dashed: true });
        addPoint(chart, validation, row.epoch, row[`val_${metric}`]);
      }
      redraw(chart);
    });
    if (!columns) {
      columns = Object.keys(row).filter((key) => !NOT_METRICS.has(key));
      historyHead.replaceChildren(el("th", { class: "num", text: "epoch" }), ...columns.map((c) => el("th", { class: "num", text: c })));
    }
    historyBody.append(el("tr", {}, el("td", { class: "num", text: row.epoch }), ...columns.map((c) => el("td", { class: "num", text: fmt(row[c]) }))));
    job.progress = { ...job.progress, epoch: row.epoch };
    progressCell.replaceChildren(progress(job));
    log.push({ epoch: row.epoch, status: job.status, points: Object.fromEntries(Object.entries(charts).map(([k, c]) => [k, points(c)])) });
  }

  // The epoch the published model is from (a checkpoint's best, early stopping's restored one) as a star on every
  // curve, and where early stopping stopped as the curves' end.
  function markEpochs(finished) {
    const training = finished.training;
    if (!training || !training.best_epoch) return;
    for (const [metric, chart] of Object.entries(charts)) {
      const source = chart.data.datasets.find((d) => d.key === "val") || chart.data.datasets.find((d) => d.key === "train");
      const point = source && source.data.find((p) => p.x === training.best_epoch);
      if (!point) continue;
      const best = series(chart, "best", { label: `best epoch (${training.best_epoch})`, colourIndex: 4 });
      Object.assign(best, { pointStyle: "star", pointRadius: 9, showLine: false });
      addPoint(chart, best, point.x, point.y);
      redraw(chart);
      chart.canvas.dataset.bestEpoch = String(training.best_epoch);
      chart.canvas.dataset.metric = metric;
    }
  }

  const stop = followJob(jobId, {
    onEpoch: addEpoch,
    onStatus: async (update) => {
      job = { ...job, ...update, progress: update.progress };
      showJob();
      if (["succeeded", "failed", "cancelled"].includes(update.status)) {
        job = await api(`/jobs/${jobId}`);
        if (isCurrent()) {
          showJob();
          markEpochs(job);
        }
      }
    },
    onError: (error) => problem.replaceChildren(errorBox(error)),
  });
  return stop;
}
