// Inside a model, as the book's chapter 8-3 looks at a CNN: the model as plot_model(show_shapes=True) draws it,
// each convolution's filters (trained, and the same layer untrained) with their statistics and histogram, and the
// feature maps of a chosen or drawn sample. Everything shown is the API's numbers and images, kept in
// window.trainserve.inside for whoever wants to check them.

import { api } from "../api.js";
import { el, errorBox, fmt } from "../ui.js";
import { downsample, instanceOf, isImageModel } from "./predict.js";

const UNTRAINED_SEED = 42;
const SAMPLES = 8;
const PAD = 160;

function dims(list) {
  return `(${list.map((d) => (d === null ? "None" : d)).join(", ")})`;
}

// The layers top to bottom, each box with its input and output shapes, as plot_model(show_shapes=True) shows them.
export function graph(model, summary) {
  let input = [null, ...model.input_shape];
  const nodes = [el("div", { class: "node input", "data-node": "input" }, el("strong", { text: "input" }), el("span", { class: "muted", text: `InputLayer · ${dims(input)}` }))];
  for (const layer of summary.layers) {
    nodes.push(el("div", { class: "edge", "aria-hidden": "true" }));
    nodes.push(
      el(
        "div",
        { class: "node", "data-node": layer.name },
        el("strong", { text: `${layer.name} (${layer.type})` }),
        el("span", { class: "shapes" }, el("span", { class: "muted", text: "input " }), dims(input), el("span", { class: "muted", text: " → output " }), dims(layer.output_shape)),
      ),
    );
    input = layer.output_shape;
  }
  return el("div", { class: "graph panel" }, nodes);
}

function histogram(stats) {
  const most = Math.max(...stats.histogram.counts, 1);
  return el(
    "div",
    { class: "histogram", title: "histogram" },
    stats.histogram.counts.map((count, i) =>
      el("span", { style: `height:${((count / most) * 100).toFixed(1)}%`, title: `${fmt(stats.histogram.edges[i])} … ${fmt(stats.histogram.edges[i + 1])}: ${count}` }),
    ),
  );
}

function filterPanel(weights) {
  const kernel = weights.weights.find((w) => w.name === "kernel");
  return el(
    "div",
    { class: "filters", "data-untrained": String(weights.untrained) },
    el("h3", { text: weights.untrained ? `untrained (seed ${UNTRAINED_SEED})` : "trained" }),
    el("div", { class: "small muted", text: `mean ${fmt(kernel.mean)} · std ${fmt(kernel.std)} · ±${fmt(weights.image_scale)}` }),
    histogram(kernel),
    el("div", { class: "tiles" }, weights.images.map((image) => el("img", { src: image.png, alt: `filter ${image.index}`, "data-index": image.index }))),
  );
}

async function showFilters(section, modelId, layers, state) {
  for (const layer of layers) {
    const row = el("div", { class: "filter-row", "data-layer": layer.name }, el("h3", { text: `${layer.name} (${layer.type})` }));
    section.append(row);
    const base = `/models/${modelId}/layers/${encodeURIComponent(layer.name)}/weights`;
    const [trained, untrained] = await Promise.all([api(base), api(`${base}?untrained=true&seed=${UNTRAINED_SEED}`)]);
    state.weights[layer.name] = { trained, untrained };
    row.append(el("div", { class: "grid2" }, filterPanel(trained), filterPanel(untrained)));
  }
}

function showMaps(container, answer) {
  container.replaceChildren(
    ...answer.outputs.map((output) =>
      el(
        "div",
        { class: "maps", "data-layer": output.layer },
        el("h3", { text: `${output.layer} · ${dims(output.shape)}` }),
        el("div", { class: "tiles" }, (output.images || []).map((image) => el("img", { src: image.png, alt: `channel ${image.index}`, "data-index": image.index }))),
      ),
    ),
  );
}

async function featureMaps(section, model, layers, state) {
  const maps = el("div", { class: "feature-maps" });
  const problem = el("div");
  const names = layers.map((layer) => layer.name);
  async function show(instance, source) {
    try {
      const answer = await api(`/models/${model.model_id}/activations`, { method: "POST", body: { instance, layers: names } });
      state.activations = { source, instance, answer };
      problem.replaceChildren();
      showMaps(maps, answer);
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  }
  const choices = el("div", { class: "samples" });
  section.append(el("h3", { text: "A sample" }), choices);
  const dataset = model.dataset.name || model.dataset.id;
  if (dataset) {
    try {
      const samples = (await api(`/datasets/${encodeURIComponent(dataset)}/samples?n=${SAMPLES}`)).samples;
      samples.forEach((sample, index) => {
        const button = el("button", { class: "sample-choice", "data-sample": index, text: `#${index} (${sample.label ?? sample.y})` });
        button.addEventListener("click", () => show(sample.x, `sample ${index}`));
        choices.append(button);
      });
    } catch (error) {
      choices.append(el("span", { class: "muted small", text: `no samples: ${error.message}` }));
    }
  }
  const [height, width, channels] = [model.input_shape[0], model.input_shape[1], model.input_shape[2] || 1];
  if (isImageModel(model.input_shape)) {
    // Drawn white on black, as the digits are; scaled to the dataset's units (digits 0–16, pixels 0–255).
    const max = model.dataset.rescale ? Math.round((1 / model.dataset.rescale) * 1e6) / 1e6 : 255;
    const canvas = el("canvas", { class: "draw", width: PAD, height: PAD, style: `width:${PAD}px;height:${PAD}px`, "aria-label": "drawing pad for feature maps" });
    const context = canvas.getContext("2d", { willReadFrequently: true });
    const blank = () => {
      context.fillStyle = "#000";
      context.fillRect(0, 0, PAD, PAD);
    };
    blank();
    let drawing = false;
    const at = (event) => {
      const box = canvas.getBoundingClientRect();
      return [((event.clientX - box.left) * PAD) / box.width, ((event.clientY - box.top) * PAD) / box.height];
    };
    canvas.addEventListener("pointerdown", (event) => {
      drawing = true;
      canvas.setPointerCapture(event.pointerId);
      context.strokeStyle = "#fff";
      context.lineWidth = PAD / 10;
      context.lineCap = "round";
      context.beginPath();
      context.moveTo(...at(event));
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drawing) return;
      context.lineTo(...at(event));
      context.stroke();
    });
    const finish = () => {
      if (!drawing) return;
      drawing = false;
      const grid = downsample(context.getImageData(0, 0, PAD, PAD), { height, width, channels, fit: true, invert: false });
      if (grid) show(instanceOf(grid, model.input_shape, max), "drawing");
    };
    canvas.addEventListener("pointerup", finish);
    canvas.addEventListener("pointercancel", finish);
    const clear = el("button", { text: "Clear" });
    clear.addEventListener("click", blank);
    section.append(el("h3", { text: "Or draw one" }), el("div", { class: "pad", style: "align-items:flex-start" }, canvas, clear));
  }
  section.append(problem, maps);
}

export async function renderInside(container, model, summary) {
  const state = (window.trainserve.inside = { weights: {}, activations: null });
  container.append(el("h2", {}, "The model as a graph"), graph(model, summary));
  const convolutions = summary.layers.filter((layer) => /^Conv[123]D$/.test(layer.type));
  if (!convolutions.length) return;
  const filters = el("section", { class: "inside-filters" }, el("h2", { text: "Filters" }));
  const maps = el("section", { class: "inside-maps" }, el("h2", { text: "Feature maps" }));
  container.append(filters, maps);
  const images = convolutions.filter((layer) => layer.type === "Conv2D");
  await Promise.all([showFilters(filters, model.model_id, images, state), featureMaps(maps, model, images, state)]);
  state.ready = true;
}
