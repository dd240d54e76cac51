// Trained models: a list, and one model's record with the table Keras' model.summary() prints.

import { api, apiKey } from "../api.js";
import { el, fmt, shape, summaryTable, when } from "../ui.js";
import { renderInside } from "./inside.js";
import { optimizerName } from "./job.js";

export async function renderList(view) {
  const list = await api("/models?limit=100");
  const rows = list.data.map((model) =>
    el(
      "tr",
      { "data-model-id": model.model_id },
      el("td", {}, el("a", { href: `#/models/${model.model_id}`, text: model.name })),
      el("td", { class: "num", text: model.version }),
      el("td", { text: model.dataset.name || model.dataset.id || "–" }),
      el("td", { text: shape(model.input_shape) }),
      el("td", { text: optimizerName(model.spec) }),
      el("td", { class: "num", text: fmt(model.total_params) }),
      el("td", { class: "num", text: fmt(model.evaluation ? model.evaluation.accuracy : model.metrics.val_accuracy) }),
      el("td", { class: "small muted", text: when(model.created_at) }),
      el("td", {}, el("a", { href: `#/predict?model=${model.model_id}`, text: "Predict" })),
    ),
  );
  view.append(
    el("h1", {}, "Models", el("span", { class: "muted small", text: `${list.count} trained` })),
    el(
      "table",
      { class: "models" },
      el("thead", {}, el("tr", {}, ["Name", "Version", "Dataset", "Input", "Optimizer", "Params", "Accuracy", "Created", ""].map((t, i) => el("th", { class: [1, 5, 6].includes(i) ? "num" : "", text: t })))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 9, class: "empty", text: "No models yet: a job that succeeds publishes one." }))),
    ),
  );
  return null;
}

export async function renderOne(view, { args, isCurrent }) {
  const id = args[0];
  const [model, summary] = await Promise.all([api(`/models/${id}`), api(`/models/${id}/summary`)]);
  if (!isCurrent()) return null;
  const download = el("button", { text: "Download .keras" });
  download.addEventListener("click", async () => {
    // A fetch, not a link, so that the API key goes along when there is one.
    const response = await fetch(`/models/${id}/download`, { headers: apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {} });
    const url = URL.createObjectURL(await response.blob());
    el("a", { href: url, download: `${id}.keras` }).click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
  const facts = [
    ["Model", id],
    ["Version", `${model.name} v${model.version}`],
    ["Job", null],
    ["Dataset", `${model.dataset.name || model.dataset.id}${model.dataset.rescale ? ` · rescale ${fmt(model.dataset.rescale, 6)}` : ""}`],
    ["Input shape", shape(model.input_shape)],
    ["Optimizer", optimizerName(model.spec)],
    ["Last epoch", Object.entries(model.metrics).filter(([k]) => k !== "epoch").map(([k, v]) => `${k} ${fmt(v)}`).join(" · ")],
    ["Held-out", model.evaluation ? Object.entries(model.evaluation).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ") : "–"],
    ["Classes", model.class_names ? model.class_names.join(", ") : "numbered"],
    ["Created", when(model.created_at)],
    ["File", `${fmt(model.size_bytes)} bytes · sha256 ${model.sha256.slice(0, 16)}…`],
  ];
  view.append(
    el("h1", {}, el("span", { class: "model-name", text: summary.name })),
    el("div", { class: "toolbar" }, el("a", { class: "button primary", href: `#/predict?model=${id}`, text: "Predict with it" }), download),
    el(
      "div",
      { class: "panel" },
      el(
        "dl",
        { class: "facts" },
        facts.flatMap(([k, v]) => [
          el("dt", { text: k }),
          k === "Job" ? el("dd", {}, el("a", { href: `#/jobs/${model.job_id}`, text: model.job_id })) : el("dd", { text: v }),
        ]),
      ),
    ),
    el("h2", {}, "Summary"),
    summaryTable(summary),
    el("details", {}, el("summary", { text: "As model.summary() prints it" }), el("pre", { text: summary.text })),
  );
  const inside = el("div", { class: "inside" });
  view.append(inside);
  await renderInside(inside, model, summary);
  return null;
}
