// One experiment, live: its status, objective and best trial; a leaderboard of its trials that re-sorts as they
// finish; every trial's curve of one metric on one chart; and the trials in parallel coordinates, one axis per
// searched path and one for the objective. Updates come from the experiment's event stream (polling without it).

import { api, followExperiment } from "../api.js";
import { colour, lineChart, redraw } from "../charts.js";
import { parallelCoordinates } from "../parallel.js";
import { badge, compact, el, errorBox, fmt, progress, when } from "../ui.js";
import { counts, TRIAL_STATES } from "./experiments.js";

const NOT_METRICS = new Set(["epoch", "attempt"]);
const PREFERRED = ["val_accuracy", "accuracy", "val_loss", "loss"];
const CURVES_MS = 1000; // at most one curves request a second while trials train
const SCORED = new Set(["complete", "pruned"]);
const SOURCES = { evaluation: "the held-out test split", last_epoch: "the last epoch", best_epoch: "the best epoch" };
const RAMP = ["#f4a261", "#2a9d8f", "#1d3557"]; // worse → better
const ORDER_LOG = 500;

// Where a trial stands when sorted by objective, before its value: complete trials, then pruned ones (their
// objective is a model stopped early, so not ranked with the complete), then those that ended without one, and the
// unfinished last.
function rank(trial) {
  const scored = typeof trial.objective === "number";
  if (scored && trial.state === "complete") return 0;
  if (scored && trial.state === "pruned") return 1;
  if (trial.state === "running") return 3;
  if (trial.state === "queued") return 4;
  return 2;
}

function ordered(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a === "number") return -1;
  if (typeof b === "number") return 1;
  return String(a).localeCompare(String(b), "en", { numeric: true });
}

// The leaderboard's order: by the column, missing values last whichever the direction, then by trial number.
function compareTrials(a, b, column, ascending) {
  const sign = ascending ? 1 : -1;
  if (column.key === "objective") {
    const both = typeof a.objective === "number" && typeof b.objective === "number";
    return rank(a) - rank(b) || (both ? sign * (a.objective - b.objective) : 0) || a.number - b.number;
  }
  const [left, right] = [column.value(a), column.value(b)];
  const [noLeft, noRight] = [left === null || left === undefined, right === null || right === undefined];
  if (noLeft || noRight) return Number(noLeft) - Number(noRight) || a.number - b.number;
  return sign * ordered(left, right) || a.number - b.number;
}

function paramSortValue(value) {
  if (value === undefined || value === null) return null;
  return typeof value === "number" ? value : compact(value);
}

function mix(from, to, share) {
  const channels = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const [a, b] = [channels(from), channels(to)];
  return `#${a.map((v, i) => Math.round(v + (b[i] - v) * share).toString(16).padStart(2, "0")).join("")}`;
}

// 0 is the worst objective drawn, 1 the best.
function ramp(share) {
  const scaled = Math.min(1, Math.max(0, share)) * (RAMP.length - 1);
  const index = Math.min(RAMP.length - 2, Math.floor(scaled));
  return mix(RAMP[index], RAMP[index + 1], scaled - index);
}

function axisFor(path, space, values) {
  const key = `param:${path}`;
  if (space && space.type === "choice") {
    return { key, label: path, kind: "category", categories: space.values.map((value) => ({ value, label: compact(value) })) };
  }
  if (space && (space.type === "int" || space.type === "float")) {
    return { key, label: path, kind: space.log ? "log" : "linear", low: space.low, high: space.high, note: space.log ? "log scale" : null };
  }
  // A path the space no longer describes: its values as they came.
  const seen = values.filter((v) => v !== undefined && v !== null);
  if (seen.every((v) => typeof v === "number")) return { key, label: path, kind: "linear" };
  const distinct = [...new Map(seen.map((v) => [JSON.stringify(v), v])).values()];
  return { key, label: path, kind: "category", categories: distinct.map((value) => ({ value, label: compact(value) })) };
}

function trialLabel(trial, paths) {
  const text = paths.map((path) => compact(trial.params[path])).join(" · ");
  return `#${trial.number} ${text.length > 48 ? `${text.slice(0, 47)}…` : text}`;
}

function metricsOf(trials) {
  const names = new Set();
  for (const trial of trials) {
    Object.entries(trial.last || {}).forEach(([key, value]) => !NOT_METRICS.has(key) && typeof value === "number" && names.add(key));
  }
  const place = (name) => (PREFERRED.includes(name) ? PREFERRED.indexOf(name) : PREFERRED.length);
  return [...names].sort((a, b) => place(a) - place(b) || a.localeCompare(b));
}

export async function render(view, { args, query, isCurrent }) {
  const id = args[0];
  const experiment = await api(`/experiments/${id}`);
  if (!isCurrent()) return null;
  const trials = new Map(experiment.trials.map((trial) => [trial.number, trial]));
  const objective = experiment.objective;
  const state = (window.trainserve.experiment = {
    id,
    ready: false,
    settled: false,
    transport: null,
    status: experiment.status,
    sort: { key: "objective", ascending: objective.direction === "min" },
    order: [],
    orders: [],
    curves: null,
    parallel: null,
  });
  let metric = query.get("metric") || null;
  let picked = Boolean(metric);
  let stopped = false;

  // ---- the page's parts ----------------------------------------------------------------------------------------
  const title = el("span", { text: experiment.name || id });
  const status = el("span");
  const problem = el("div");
  const facts = el("dl", { class: "facts" });
  const cancel = el("button", { text: "Cancel experiment", "data-action": "cancel" });
  const head = el("tr");
  const body = el("tbody");
  const select = el("select", { name: "metric", "aria-label": "metric of the curves" });
  const canvas = el("canvas", { "data-chart": "experiment", "data-points": "0", role: "img", "aria-label": "every trial's curve of the chosen metric" });
  const parallel = el("div", { class: "parallel-box" });
  const parallelNote = el("p", { class: "small muted" });
  view.append(
    el("h1", {}, title, status),
    el("div", { class: "toolbar" }, cancel, el("a", { class: "button", href: "#/experiments", text: "All experiments" })),
    problem,
    el("div", { class: "panel" }, facts),
    el("h2", { text: "Leaderboard" }),
    el("div", { class: "table-scroll" }, el("table", { class: "leaderboard", "aria-label": "trials" }, el("thead", {}, head), body)),
    el("h2", {}, "Curves of every trial ", el("label", { class: "small muted" }, " metric ", select)),
    el("div", { class: "panel" }, el("div", { class: "chart-box tall" }, canvas), el("p", { class: "small muted", text: "Dashed and ending in ✕: stopped by the pruner. Thick: the best trial." })),
    el("h2", { text: "Parameters and objective" }),
    el("div", { class: "panel" }, parallel, parallelNote),
  );
  const chart = lineChart("experiment", canvas, { title: "", yTitle: "" });

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const answer = await api(`/experiments/${id}/cancel`, { method: "POST" });
      answer.trials.forEach(setTrial);
      summary(answer);
    } catch (error) {
      problem.replaceChildren(errorBox(error));
      cancel.disabled = false;
    }
  });

  // ---- header --------------------------------------------------------------------------------------------------
  function renderHeader() {
    status.replaceChildren(badge(experiment.status));
    const running = experiment.status === "running";
    cancel.hidden = !running;
    cancel.disabled = running && experiment.cancel_requested;
    cancel.textContent = experiment.cancel_requested && running ? "Cancelling…" : "Cancel experiment";
    const best = experiment.best;
    const bestTrial = best ? trials.get(best.number) : null;
    const seed = (experiment.spec.search || {}).seed;
    const rows = [
      ["Objective", el("span", { "data-objective": `${objective.metric} ${objective.direction} ${objective.source}` }, `${objective.metric}, ${objective.direction === "max" ? "maximised" : "minimised"}, from ${SOURCES[objective.source] || objective.source}`)],
      ["Search", `${experiment.search}${typeof seed === "number" ? ` (seed ${seed})` : ""} over ${experiment.params.join(", ")}`],
      ["Pruner", experiment.pruner || "none"],
      ["Trials", `${experiment.trials_asked} asked of ${experiment.max_trials}, at most ${experiment.max_parallel} at once`],
      ["By state", counts(experiment.counts)],
      [
        "Best trial",
        best
          ? el(
              "span",
              { "data-best-trial": best.number },
              el("a", { href: `#/jobs/${best.job_id}`, text: `#${best.number}` }),
              ` ${objective.metric} ${fmt(best.objective)} · ${experiment.params.map((p) => compact(best.params[p])).join(" · ")} · model `,
              best.model_id ? el("a", { href: `#/models/${best.model_id}`, text: best.model_id.slice(0, 8) }) : "–",
              bestTrial && bestTrial.state !== "complete" ? ` (${bestTrial.state})` : "",
            )
          : "none yet",
      ],
      ["Published model", experiment.published_model_id ? el("a", { href: `#/models/${experiment.published_model_id}`, text: experiment.published_model_id }) : experiment.status === "running" ? "once it ends" : "–"],
      ["Created", when(experiment.created_at)],
      ["Finished", when(experiment.finished_at)],
    ];
    facts.replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)]));
    if (experiment.error) problem.replaceChildren(errorBox({ message: experiment.error }));
  }

  // ---- leaderboard ---------------------------------------------------------------------------------------------
  const columns = [
    { key: "number", label: "#", num: true, value: (t) => t.number, cell: (t) => el("a", { href: `#/jobs/${t.job_id}`, text: `#${t.number}` }) },
    { key: "state", label: "State", value: (t) => TRIAL_STATES.indexOf(t.state), cell: (t) => badge(t.state) },
    { key: "objective", label: `${objective.metric} (${objective.direction})`, num: true, value: (t) => t.objective, cell: (t) => fmt(t.objective) },
    { key: "progress", label: "Progress", value: (t) => (t.progress.epochs ? t.progress.epoch / t.progress.epochs : 0), cell: (t) => progress(t) },
    ...experiment.params.map((path) => ({ key: `param:${path}`, label: path, value: (t) => paramSortValue(t.params[path]), cell: (t) => compact(t.params[path]) })),
    {
      key: "stop",
      label: "Stop reason",
      value: (t) => t.stop_reason || (t.error ? t.error.message : null),
      cell: (t) => (t.stop_reason ? el("span", { class: "stop-reason", text: t.stop_reason }) : t.error ? el("span", { class: "error-text", text: `${t.error.type}: ${t.error.message}` }) : ""),
    },
  ];

  function sortBy(key) {
    if (state.sort.key === key) state.sort = { key, ascending: !state.sort.ascending };
    else state.sort = { key, ascending: key === "objective" ? objective.direction === "min" : true };
    showSort();
    renderBoard();
  }
  // The header is built once and only its marks change, so a keyboard user's focus stays on the button pressed.
  head.replaceChildren(
    ...columns.map((column) =>
      el(
        "th",
        { class: column.num ? "num" : "", "data-column": column.key, scope: "col" },
        el("button", { type: "button", class: "sort", "data-sort": column.key, onclick: () => sortBy(column.key) }, column.label, el("span", { class: "arrow", "aria-hidden": "true" })),
      ),
    ),
  );
  function showSort() {
    for (const th of head.children) {
      const sorted = state.sort.key === th.dataset.column;
      th.setAttribute("aria-sort", sorted ? (state.sort.ascending ? "ascending" : "descending") : "none");
      th.querySelector(".arrow").textContent = sorted ? (state.sort.ascending ? " ▲" : " ▼") : "";
    }
  }
  const rowCache = new Map();
  function rowFor(trial, best) {
    const signature = JSON.stringify([trial, best]);
    const cached = rowCache.get(trial.number);
    if (cached && cached.signature === signature) return cached.row;
    const row = el(
      "tr",
      { "data-trial": trial.number, "data-state": trial.state, "data-job-id": trial.job_id, class: best ? "best" : "" },
      columns.map((column) => el("td", { class: column.num ? "num" : "", "data-column": column.key }, column.cell(trial))),
    );
    if (best) row.title = "the best trial";
    rowCache.set(trial.number, { signature, row });
    return row;
  }
  function renderBoard() {
    const column = columns.find((c) => c.key === state.sort.key);
    const list = [...trials.values()].sort((a, b) => compareTrials(a, b, column, state.sort.ascending));
    const bestNumber = experiment.best ? experiment.best.number : null;
    body.replaceChildren(...list.map((trial) => rowFor(trial, trial.number === bestNumber)));
    if (!list.length) body.append(el("tr", {}, el("td", { colspan: columns.length, class: "empty", text: "No trial asked yet." })));
    const order = list.map((trial) => trial.number);
    if (order.join() !== state.order.join()) {
      state.order = order;
      state.orders.push({ order, sort: state.sort.key, status: experiment.status, ended: list.filter((t) => !["queued", "running"].includes(t.state)).length, at: Date.now() });
      if (state.orders.length > ORDER_LOG) state.orders.shift();
    }
  }

  // ---- curves --------------------------------------------------------------------------------------------------
  // Until one is picked, the metric the objective is about: its validation form when the objective is the held-out
  // evaluation (the nearest thing the epochs log), else the logged metric itself.
  function updateMetrics() {
    const names = metricsOf(trials.values());
    if (names.length ? !picked || !names.includes(metric) : !metric) {
      const wanted = objective.source === "evaluation" ? [`val_${objective.metric}`, objective.metric] : [objective.metric];
      const fallback = wanted.find((name) => names.includes(name)) || names[0] || metric || objective.metric;
      if (fallback !== metric && metric !== null) curvesSoon();
      metric = fallback;
    }
    const shown = names.includes(metric) ? names : [metric, ...names];
    if ([...select.options].map((o) => o.value).join() !== shown.join()) {
      select.replaceChildren(...shown.map((name) => el("option", { value: name, text: name })));
    }
    select.value = metric;
  }
  select.addEventListener("change", () => {
    metric = select.value;
    picked = true;
    loadCurves();
  });

  let fetched = 0;
  function drawCurves(answer) {
    const bestNumber = experiment.best ? experiment.best.number : null;
    const paths = experiment.params;
    chart.data.datasets = answer.trials.map((curve) => {
      const trial = trials.get(curve.number) || { number: curve.number, params: {} };
      const data = curve.epochs.map((epoch, i) => ({ x: epoch, y: curve.values[i] })).filter((point) => typeof point.y === "number");
      const pruned = curve.state === "pruned";
      const best = curve.number === bestNumber;
      const last = data.length - 1;
      const hue = colour(curve.number);
      // The pruner's cut drawn where it happened: dashed, and a cross on the last epoch the trial ran.
      const end = (atEnd, elsewhere) => data.map((_, i) => (pruned && i === last ? atEnd : elsewhere));
      return {
        key: curve.number,
        trial: curve.number,
        state: curve.state,
        best,
        pruned,
        label: trialLabel(trial, paths),
        data,
        borderColor: best ? hue : `${hue}b0`,
        backgroundColor: hue,
        borderWidth: best ? 4 : 1.75,
        borderDash: pruned ? [6, 4] : [],
        order: best ? -1 : curve.number,
        pointRadius: end(7, best ? 3 : 1.5),
        pointStyle: end("crossRot", "circle"),
        pointBorderWidth: end(3, 1),
        pointBorderColor: hue,
        tension: 0.15,
      };
    });
    const epochs = Math.max(1, ...[...trials.values()].map((t) => t.progress.epochs || 0));
    chart.options.scales.x.max = epochs;
    chart.options.plugins.title = { display: true, text: `${answer.metric} per epoch, every trial` };
    chart.options.scales.y.title = { display: true, text: answer.metric };
    redraw(chart);
    canvas.dataset.metric = answer.metric;
    state.curves = {
      metric: answer.metric,
      fetched: ++fetched,
      lines: chart.data.datasets.map((d) => ({ number: d.trial, state: d.state, best: d.best, dashed: d.borderDash.length > 0, marker: d.pruned && d.data.length ? d.pointStyle[d.data.length - 1] : null, points: d.data.length, xs: d.data.map((p) => p.x), ys: d.data.map((p) => p.y) })),
    };
  }

  // Requests run one after another, so the last drawn is the newest; each draws only if its metric is still chosen.
  let chain = Promise.resolve();
  function loadCurves() {
    chain = chain.then(async () => {
      if (stopped) return;
      const wanted = metric;
      try {
        const answer = await api(`/experiments/${id}/curves?metric=${encodeURIComponent(wanted)}`);
        if (!stopped && wanted === metric) drawCurves(answer);
      } catch (error) {
        if (!stopped) problem.replaceChildren(errorBox(error));
      }
    });
    return chain;
  }
  let curvesTimer = null;
  let curvesAt = 0;
  function curvesSoon() {
    if (curvesTimer) return;
    curvesTimer = setTimeout(
      () => {
        curvesTimer = null;
        curvesAt = Date.now();
        loadCurves();
      },
      Math.max(0, curvesAt + CURVES_MS - Date.now()),
    );
  }

  // ---- parallel coordinates ------------------------------------------------------------------------------------
  function drawParallel() {
    const space = experiment.spec.space || {};
    const all = [...trials.values()];
    const scored = all.filter((t) => SCORED.has(t.state) && typeof t.objective === "number").sort((a, b) => a.number - b.number);
    const values = scored.map((t) => t.objective);
    const [low, high] = values.length ? [Math.min(...values), Math.max(...values)] : [0, 1];
    const goodness = (v) => (high === low ? 1 : objective.direction === "max" ? (v - low) / (high - low) : (high - v) / (high - low));
    const axes = experiment.params.map((path) => axisFor(path, space[path], all.map((t) => t.params[path])));
    // Better at the top whichever the direction; a little room past the best and the worst, so that their lines
    // do not run along the frame.
    const margin = 0.06 * (high - low || Math.abs(high) || 1);
    axes.push({ key: "objective", label: `objective: ${objective.metric}`, kind: "linear", low: low - margin, high: high + margin, reversed: objective.direction === "min", note: objective.direction === "max" ? "higher is better" : "lower is better" });
    const bestNumber = experiment.best ? experiment.best.number : null;
    const lines = scored.map((t) => ({
      id: t.number,
      values: { ...Object.fromEntries(experiment.params.map((path) => [`param:${path}`, t.params[path]])), objective: t.objective },
      colour: ramp(goodness(t.objective)),
      width: t.number === bestNumber ? 4.5 : 2,
      dashed: t.state === "pruned",
      title: `${trialLabel(t, experiment.params)} → ${objective.metric} ${fmt(t.objective)}${t.state === "pruned" ? " (pruned)" : ""}`,
      attrs: { "data-trial": t.number, "data-state": t.state },
    }));
    const drawn = parallelCoordinates(parallel, { axes, lines });
    parallelNote.replaceChildren(
      `${lines.length} of ${all.length} trials drawn (those with an objective), coloured from worse `,
      el("span", { class: "ramp", style: `background:linear-gradient(90deg, ${RAMP.join(", ")})` }),
      " to better; dashed: pruned; thick: the best.",
    );
    state.parallel = {
      axes: drawn.axes.map((a) => ({ key: a.key, label: a.label, kind: a.kind, ticks: a.ticks.map((t) => t.label) })),
      lines: drawn.lines.map((line, i) => ({ number: line.id, state: scored[i].state, objective: scored[i].objective, colour: lines[i].colour, dashed: lines[i].dashed, points: line.points })),
    };
  }

  // ---- updates -------------------------------------------------------------------------------------------------
  function renderAll() {
    renderHeader();
    renderBoard();
    updateMetrics();
    drawParallel();
    state.status = experiment.status;
  }
  let frame = null;
  function renderSoon() {
    if (!frame) frame = requestAnimationFrame(() => ((frame = null), renderAll()));
  }
  function setTrial(trial) {
    const before = trials.get(trial.number);
    trials.set(trial.number, trial);
    if (!before || before.state !== trial.state || (before.last || {}).epoch !== (trial.last || {}).epoch) curvesSoon();
    renderSoon();
  }
  let settling = null;
  function summary(update) {
    const { trials: _trials, spec: _spec, ...fields } = update;
    Object.assign(experiment, fields);
    renderSoon();
    if (experiment.status !== "running" && !settling) settling = settle();
  }
  // Once it has ended: everything read once more, so the page ends on what the API holds, and the curves drawn whole.
  async function settle() {
    try {
      const fresh = await api(`/experiments/${id}`);
      if (stopped) return;
      trials.clear();
      fresh.trials.forEach((trial) => trials.set(trial.number, trial));
      summary(fresh);
      renderAll();
      await loadCurves();
      if (!stopped) state.settled = true;
    } catch (error) {
      if (!stopped) problem.replaceChildren(errorBox(error));
    }
  }

  showSort();
  renderAll();
  await loadCurves();
  if (!isCurrent()) return null;
  state.ready = true;
  let unfollow = () => {};
  if (experiment.status === "running") {
    unfollow = followExperiment(id, {
      onTrial: setTrial,
      onExperiment: summary,
      onMode: (mode) => (state.transport = mode),
      onError: (error) => problem.replaceChildren(errorBox(error)),
    });
  } else {
    state.settled = true;
  }
  const onResize = () => renderSoon();
  window.addEventListener("resize", onResize);
  return () => {
    stopped = true;
    unfollow();
    clearTimeout(curvesTimer);
    if (frame) cancelAnimationFrame(frame);
    window.removeEventListener("resize", onResize);
  };
}

