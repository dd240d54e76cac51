// Datasets, built-in and uploaded, and the first samples of one: images (PNG from the API, or drawn here from the
// numbers of an image-shaped built-in such as digits) or rows of numbers.

import { api } from "../api.js";
import { el, errorBox, fmt, shape } from "../ui.js";

const SAMPLES = 16;

function drawn(x, max) {
  // A sample of shape (height, width) or (height, width, channels) in its own units, scaled to 0–255 by max.
  const height = x.length;
  const width = x[0].length;
  const canvas = el("canvas", { width, height });
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let i = 0; i < width; i++) {
      const value = x[y][i];
      const rgb = Array.isArray(value) ? (value.length >= 3 ? value.slice(0, 3) : [value[0], value[0], value[0]]) : [value, value, value];
      pixels.data.set([...rgb.map((v) => (v / max) * 255), 255], (y * width + i) * 4);
    }
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

async function showSamples(section, dataset) {
  section.replaceChildren(el("h2", {}, `Samples of ${dataset.name}`), el("p", { class: "muted", text: "Loading…" }));
  let answer;
  try {
    answer = await api(`/datasets/${encodeURIComponent(dataset.dataset_id)}/samples?n=${SAMPLES}`);
  } catch (error) {
    section.replaceChildren(el("h2", {}, `Samples of ${dataset.name}`), errorBox(error));
    return;
  }
  const imageShaped = dataset.input_shape.length === 2 || dataset.input_shape.length === 3;
  const values = answer.samples.flatMap((s) => s.x.flat(3));
  const max = (dataset.stats && dataset.stats.max) || Math.max(1, ...values);
  const cards = answer.samples.map((sample) => {
    let picture;
    if (sample.image) picture = el("img", { src: sample.image, alt: sample.label || String(sample.y) });
    else if (imageShaped) picture = drawn(sample.x, max);
    else picture = el("div", { class: "numbers", text: sample.x.map((v) => fmt(v, 2)).join(", ") });
    return el("div", { class: "sample", "data-index": sample.index }, picture, el("span", { text: sample.label ?? `class ${sample.y}` }));
  });
  section.replaceChildren(
    el("h2", {}, `Samples of ${dataset.name}`, el("span", { class: "muted small", text: ` first ${answer.samples.length} of ${fmt(answer.rows)} (${answer.split})` })),
    el("div", { class: "samples panel" }, cards),
  );
}

export async function render(view, { args, isCurrent }) {
  const list = await api("/datasets?limit=500");
  if (!isCurrent()) return null;
  const section = el("section", { class: "dataset-samples" });
  let chosen = list.data.find((d) => d.dataset_id === args[0]);
  if (!chosen && args[0]) chosen = await api(`/datasets/${encodeURIComponent(args[0])}`);
  chosen = chosen || list.data.find((d) => d.source === "scikit-learn" && d.input_shape.length >= 2) || list.data[0];
  const rows = list.data.map((d) =>
    el(
      "tr",
      { "data-dataset-id": d.dataset_id, class: chosen && d.dataset_id === chosen.dataset_id ? "selected" : "" },
      el("td", {}, el("a", { href: `#/datasets/${encodeURIComponent(d.dataset_id)}`, text: d.name })),
      el("td", { text: d.source }),
      el("td", { text: shape(d.input_shape) }),
      el("td", { class: "num", text: d.num_classes }),
      el("td", { class: "small", text: d.class_names ? d.class_names.slice(0, 10).join(", ") + (d.class_names.length > 10 ? ", …" : "") : "–" }),
      el("td", { class: "num", text: d.splits ? Object.entries(d.splits).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ") : "–" }),
      el("td", { class: "small", text: d.stats ? `${fmt(d.stats.min, 2)}–${fmt(d.stats.max, 2)}` : "–" }),
      el("td", {}, d.available_offline ? el("span", { class: "badge succeeded", text: "offline" }) : el("span", { class: "badge", text: "needs download" })),
    ),
  );
  view.append(
    el("h1", {}, "Datasets"),
    el(
      "table",
      { class: "datasets" },
      el("thead", {}, el("tr", {}, ["Name", "Source", "Sample shape", "Classes", "Class names", "Rows", "Values", ""].map((t) => el("th", { text: t })))),
      el("tbody", {}, rows),
    ),
    section,
  );
  if (chosen) await showSamples(section, chosen);
  return null;
}
