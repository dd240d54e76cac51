// The predict playground: draw on a canvas (or load an image), see the class probabilities as bars. The drawing is
// downsampled to the model's input shape in its dataset's units (digits: 8×8 in 0–16; Fashion-MNIST: 28×28 in 0–255)
// because POST /predict takes inputs as the dataset stores them and applies the model's rescale itself.

import { api } from "../api.js";
import { el, errorBox, fmt, shape } from "../ui.js";

const SIZE = 280;
const BRUSH = 22;

// Pixels of the source canvas averaged into a height×width grid of values 0..1 per channel.
// fit: crop to the drawing's bounding box and centre it (as the digit datasets were made), else the whole canvas.
export function downsample(image, { height, width, channels, fit, invert }) {
  const { data, width: w, height: h } = image;
  const level = (i) => {
    const value = (data[i] + data[i + 1] + data[i + 2]) / 3 / 255;
    return invert ? 1 - value : value;
  };
  let x0 = 0;
  let y0 = 0;
  let sx = w;
  let sy = h;
  if (fit) {
    let left = w;
    let right = -1;
    let top = h;
    let bottom = -1;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (level((y * w + x) * 4) > 0.05) {
          left = Math.min(left, x);
          right = Math.max(right, x);
          top = Math.min(top, y);
          bottom = Math.max(bottom, y);
        }
      }
    }
    if (right < 0) return null; // nothing drawn
    // Small inputs (8×8 digits) are drawn edge to edge; MNIST-like ones keep the digit in the middle 20 of 28.
    const fill = Math.max(height, width) <= 12 ? 1 : 20 / 28;
    const side = Math.max(right - left + 1, bottom - top + 1) / fill;
    const longest = Math.max(height, width);
    sx = (side * width) / longest;
    sy = (side * height) / longest;
    x0 = (left + right + 1) / 2 - sx / 2;
    y0 = (top + bottom + 1) / 2 - sy / 2;
  }
  const sums = new Float64Array(height * width * channels);
  for (let y = 0; y < h; y++) {
    const gy = Math.floor(((y + 0.5 - y0) / sy) * height);
    if (gy < 0 || gy >= height) continue;
    for (let x = 0; x < w; x++) {
      const gx = Math.floor(((x + 0.5 - x0) / sx) * width);
      if (gx < 0 || gx >= width) continue;
      const i = (y * w + x) * 4;
      const cell = (gy * width + gx) * channels;
      if (channels === 1) sums[cell] += level(i);
      else {
        for (let c = 0; c < channels; c++) {
          const v = c < 3 ? data[i + c] / 255 : data[i + 3] / 255;
          sums[cell + c] += invert && c < 3 ? 1 - v : v;
        }
      }
    }
  }
  const area = (sx / width) * (sy / height);
  const grid = [];
  for (let gy = 0; gy < height; gy++) {
    const row = [];
    for (let gx = 0; gx < width; gx++) {
      const cell = (gy * width + gx) * channels;
      const values = [];
      for (let c = 0; c < channels; c++) values.push(Math.min(1, sums[cell + c] / area));
      row.push(values);
    }
    grid.push(row);
  }
  return grid;
}

// The grid (0..1) as one instance in the dataset's units, shaped as the model's input_shape.
export function instanceOf(grid, inputShape, max) {
  const round = (v) => Math.round(v * max * 1000) / 1000;
  if (inputShape.length === 2) return grid.map((row) => row.map((values) => round(values[0])));
  return grid.map((row) => row.map((values) => values.map(round)));
}

export function isImageModel(inputShape) {
  return inputShape.length === 2 || (inputShape.length === 3 && [1, 3, 4].includes(inputShape[2]));
}

async function unitsMax(model) {
  if (model.dataset.rescale) return Math.round((1 / model.dataset.rescale) * 1e6) / 1e6;
  try {
    const dataset = await api(`/datasets/${encodeURIComponent(model.dataset.id || model.dataset.name)}`);
    if (dataset.stats && dataset.stats.max > 0) return dataset.stats.max;
  } catch {
    // fall through: assume 8-bit images
  }
  return 255;
}

function bars(container, model, response) {
  const probabilities = response.predictions[0];
  const top = response.classes[0];
  const names = model.class_names || probabilities.map((_, i) => String(i));
  const label = response.labels ? response.labels[0] : String(top);
  container.replaceChildren(
    el("h2", {}, "Prediction: ", el("span", { class: "predicted", "data-class": top, text: label }), el("span", { class: "muted small", text: ` ${(probabilities[top] * 100).toFixed(1)}%` })),
    el(
      "div",
      { class: "bars" },
      probabilities.map((p, i) =>
        el(
          "div",
          { class: `bar${i === top ? " best" : ""}`, "data-class": i, "data-prob": p },
          el("span", { class: "name", text: names[i] || String(i) }),
          el("span", { class: "track" }, el("span", { class: "fill", style: `width:${(p * 100).toFixed(2)}%` })),
          el("span", { class: "pct", text: `${(p * 100).toFixed(1)}%` }),
        ),
      ),
    ),
  );
}

export async function render(view, { query, isCurrent }) {
  const list = await api("/models?limit=100");
  if (!isCurrent()) return null;
  view.append(el("h1", {}, "Predict"));
  if (!list.data.length) {
    view.append(el("div", { class: "empty" }, "No trained models yet. ", el("a", { href: "#/new", text: "Train one." })));
    return null;
  }
  const chosen = query.get("model") || list.data[0].model_id;
  const select = el("select", { name: "model", "aria-label": "model" });
  const models = list.data;
  if (!models.some((m) => m.model_id === chosen)) models.unshift(await api(`/models/${chosen}`));
  select.replaceChildren(...models.map((m) => el("option", { value: m.model_id, text: `${m.name} v${m.version} · ${m.dataset.name || m.dataset.id} · ${shape(m.input_shape)}` })));
  select.value = chosen;
  select.addEventListener("change", () => (location.hash = `#/predict?model=${select.value}`));
  const model = models.find((m) => m.model_id === chosen);
  const max = await unitsMax(model);
  if (!isCurrent()) return null;
  const result = el("div", { class: "result" });
  const problem = el("div");
  view.append(
    el("div", { class: "toolbar" }, el("label", { class: "small" }, "model ", select), el("a", { href: `#/models/${model.model_id}`, text: "model page" })),
    problem,
  );

  async function predict(instance) {
    try {
      const response = await api("/predict", { method: "POST", body: { model_id: model.model_id, instances: [instance] } });
      if (!isCurrent()) return;
      problem.replaceChildren();
      window.trainserve.lastPrediction = { model_id: model.model_id, instance, response };
      bars(result, model, response);
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  }

  if (!isImageModel(model.input_shape)) {
    const text = el("textarea", { rows: 4, name: "instance" });
    try {
      const samples = await api(`/datasets/${encodeURIComponent(model.dataset.id || model.dataset.name)}/samples?n=1`);
      text.value = JSON.stringify(samples.samples[0].x);
    } catch {
      text.value = JSON.stringify(new Array(model.input_shape.reduce((a, b) => a * b, 1)).fill(0));
    }
    const go = el("button", { class: "primary", text: "Predict" });
    go.addEventListener("click", () => {
      try {
        predict(JSON.parse(text.value));
      } catch (error) {
        problem.replaceChildren(errorBox({ message: `not JSON: ${error.message}` }));
      }
    });
    view.append(
      el("div", { class: "predict" }, el("div", { class: "pad" }, el("label", { class: "field" }, `one instance of shape ${shape(model.input_shape)}, in the dataset's units`, text), go), result),
    );
    return null;
  }

  const [height, width] = model.input_shape;
  const channels = model.input_shape.length === 3 ? model.input_shape[2] : 1;
  const canvas = el("canvas", { class: "draw", width: SIZE, height: SIZE, "aria-label": "drawing pad" });
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const preview = el("canvas", { class: "pixels", width, height, style: `width:${Math.max(96, width * 4)}px;height:${Math.max(96, height * 4)}px` });
  const invert = el("input", { type: "checkbox", name: "invert" });
  const file = el("input", { type: "file", accept: "image/*", name: "image" });
  let mode = "draw";

  function blank() {
    context.fillStyle = "#000";
    context.fillRect(0, 0, SIZE, SIZE);
    preview.getContext("2d").clearRect(0, 0, width, height);
    result.replaceChildren(el("p", { class: "muted", text: "Draw a digit (white on black) or load an image." }));
  }
  function showPreview(grid) {
    const pixels = preview.getContext("2d").createImageData(width, height);
    grid.forEach((row, y) =>
      row.forEach((values, x) => {
        const i = (y * width + x) * 4;
        const [r, g, b] = values.length >= 3 ? values : [values[0], values[0], values[0]];
        pixels.data.set([r * 255, g * 255, b * 255, 255], i);
      }),
    );
    preview.getContext("2d").putImageData(pixels, 0, 0);
  }
  function run() {
    const grid = downsample(context.getImageData(0, 0, SIZE, SIZE), { height, width, channels, fit: mode === "draw", invert: invert.checked });
    if (!grid) return;
    showPreview(grid);
    predict(instanceOf(grid, model.input_shape, max));
  }

  let drawing = false;
  let last = null;
  const position = (event) => {
    const box = canvas.getBoundingClientRect();
    return [((event.clientX - box.left) * SIZE) / box.width, ((event.clientY - box.top) * SIZE) / box.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    if (mode !== "draw") {
      mode = "draw";
      invert.checked = false;
      blank();
    }
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    last = position(event);
    context.fillStyle = "#fff";
    context.beginPath();
    context.arc(last[0], last[1], BRUSH / 2, 0, 2 * Math.PI);
    context.fill();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const point = position(event);
    context.strokeStyle = "#fff";
    context.lineWidth = BRUSH;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...last);
    context.lineTo(...point);
    context.stroke();
    last = point;
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    run();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  file.addEventListener("change", async () => {
    if (!file.files.length) return;
    const bitmap = await createImageBitmap(file.files[0]);
    mode = "image";
    context.fillStyle = "#000";
    context.fillRect(0, 0, SIZE, SIZE);
    const scale = Math.min(SIZE / bitmap.width, SIZE / bitmap.height);
    const [w, h] = [bitmap.width * scale, bitmap.height * scale];
    context.drawImage(bitmap, (SIZE - w) / 2, (SIZE - h) / 2, w, h);
    // Dark ink on light paper: flip it, since the digit datasets are light on dark.
    const corner = context.getImageData(0, 0, 4, 4).data;
    invert.checked = channels === 1 && (corner[0] + corner[1] + corner[2]) / 3 > 128;
    run();
  });
  invert.addEventListener("change", run);
  blank();
  view.append(
    el(
      "div",
      { class: "predict" },
      el(
        "div",
        { class: "pad panel" },
        canvas,
        el("div", { class: "toolbar" }, el("button", { text: "Clear", onclick: () => ((mode = "draw"), blank()) }), el("label", { class: "small" }, invert, " invert"), file),
        el("div", { class: "small muted" }, `The model sees ${height}×${width}${channels > 1 ? `×${channels}` : ""}, values 0–${fmt(max, 2)}:`),
        preview,
      ),
      el("div", { class: "panel" }, result),
    ),
  );
  return null;
}
