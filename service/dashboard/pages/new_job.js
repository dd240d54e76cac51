// A new training job, put together as a Keras learner puts a model together: pick a dataset (its input shape is the
// model's input), add, remove and reorder layers and set each one's fields, then the optimizer, loss, metrics and
// fit options. Every edit is checked by POST /train?dry_run=true: the summary table and the parameter count come
// back, or each problem is shown at the input it is about. The request itself is one click away (the JSON tab), and
// "Start training" sends it to POST /train. Every list and field comes from GET /spec/options.

import { api, ApiError } from "../api.js";
import { clearErrors, errorSlot, fieldEditor, fieldEditors, pathOf, placeErrors, retyped } from "../builder.js";
import { el, errorBox, fmt, shape, summaryTable } from "../ui.js";
import { queueOptimizerComparison } from "./compare.js";

const PREVIEW_DELAY_MS = 350;
const START_EXAMPLE = "digits_sigmoid"; // the chapter's model: Flatten → Dense(100, sigmoid) → Dense(10, softmax)
const EMPTY = "empty";
// Dataset fields that only word-index sequences have, and the book's values for imdb (load_data(num_words=500),
// pad_sequences(maxlen=100)) when one is picked.
const SEQUENCE_FIELDS = ["num_words", "maxlen", "padding", "truncating"];
const BOOK_SEQUENCES = { num_words: 500, maxlen: 100 };
const VALIDATION = [
  ["none", "none"],
  ["split", "the last rows of the training data (validation_split)"],
  ["held_out", "rows held out at random (validation_data)"],
  ["test", "the test split (validation_data='test')"],
];

function bytes(count) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function sameList(a, b) {
  return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((value, i) => value === b[i]);
}

export async function render(view, { query, isCurrent }) {
  const [examples, options] = await Promise.all([api("/examples").then((list) => list.data), api("/spec/options")]);
  if (!isCurrent()) return null;
  const layerTypes = options.layers.map((layer) => layer.type).filter((type) => type !== "input");
  const fieldOf = (part, name) => options[part].find((field) => field.name === name);
  const state = { request: null, tab: "builder", timer: null, controller: null, sequence: 0 };
  const shared = (window.trainserve.builder = { state: "pending", preview: null, problems: [] });

  // ---- datasets and the model's input ---------------------------------------------------------------------------

  function choiceOf(dataset) {
    if (!dataset || typeof dataset !== "object") return null;
    return options.datasets.find((choice) => (dataset.id ? choice.dataset.id === dataset.id : choice.dataset.name === dataset.name)) || null;
  }
  function inputShapeOf(dataset, choice) {
    let result = choice.sequences ? (dataset.maxlen ? [dataset.maxlen] : []) : [...choice.input_shape];
    if (Array.isArray(dataset.reshape) && dataset.reshape.length) result = [...dataset.reshape];
    if (dataset.one_hot) {
      const width = choice.sequences ? dataset.num_words : choice.vocabulary_size;
      if (width) result = [...result, width];
    }
    return result;
  }
  // Images are fed as the book feeds them, scaled to 0–1 (train_input / 255.0; digits / 16); other inputs as they are.
  function rescaleFor(choice) {
    if (choice.sequences || !choice.value_range || choice.input_shape.length < 2) return undefined;
    const top = choice.value_range[1];
    return top > 1 ? 1 / top : undefined;
  }

  // ---- the request: from an example, empty, or JSON -------------------------------------------------------------

  function emptyRequest() {
    const dataset = state.request ? { ...state.request.dataset } : { name: "digits", rescale: 1 / 16 };
    return {
      model: { input_shape: [], layers: [] },
      compile: { optimizer: "adam", loss: "sparse_categorical_crossentropy", metrics: ["accuracy"] },
      dataset,
      fit: { epochs: 5, batch_size: 32, validation_split: 0.2 },
    };
  }

  // Why the form cannot show this request (the JSON tab still can), or null when it can.
  function whyNot(body) {
    if (!body || typeof body !== "object" || Array.isArray(body)) return "the request is not a JSON object.";
    const model = body.model;
    if (!model || typeof model !== "object" || !Array.isArray(model.layers)) return "the builder needs model.layers, a list of layers.";
    for (const [index, layer] of model.layers.entries()) {
      const where = `model.layers[${index}]`;
      if (!layer || typeof layer !== "object" || Array.isArray(layer)) return `${where} is not an object.`;
      if (layer.type === "input") return `${where} is an input layer: the builder takes the model's input from the dataset, as model.input_shape.`;
      if (!layerTypes.includes(layer.type)) return `${where} has type ${JSON.stringify(layer.type)}, which is no layer type the service knows.`;
    }
    if (!body.compile || typeof body.compile !== "object") return "the builder needs compile, an object.";
    const optimizer = body.compile.optimizer;
    const optimizerType = typeof optimizer === "string" ? optimizer : optimizer && optimizer.type;
    if (!options.optimizers.some((o) => o.type === optimizerType)) return `compile.optimizer is ${JSON.stringify(optimizer)}, which is no optimizer the service knows.`;
    if (body.fit !== undefined && (!body.fit || typeof body.fit !== "object")) return "fit is not an object.";
    const callbacks = body.fit && body.fit.callbacks;
    if (callbacks !== undefined && (!Array.isArray(callbacks) || callbacks.some((c) => !c || !options.callbacks.some((o) => o.type === c.type)))) {
      return "fit.callbacks is not a list of callbacks the service knows.";
    }
    const choice = choiceOf(body.dataset);
    if (!choice) return `dataset ${JSON.stringify(body.dataset)} is none of the datasets the service offers.`;
    const expected = inputShapeOf(body.dataset, choice);
    if (model.input_shape !== undefined && !sameList(model.input_shape, expected)) {
      return (
        `model.input_shape ${JSON.stringify(model.input_shape)} is not what dataset ${choice.name} gives (${JSON.stringify(expected)}): ` +
        "the builder takes the model's input from the dataset (with its reshape, maxlen and one_hot)."
      );
    }
    return null;
  }

  function adopt(body) {
    body.fit = body.fit || {};
    state.request = body;
    syncInputShape();
  }

  function syncInputShape() {
    const request = state.request;
    const choice = choiceOf(request.dataset);
    if (choice) request.model.input_shape = inputShapeOf(request.dataset, choice);
  }

  // ---- the page --------------------------------------------------------------------------------------------------

  const start = el("select", { name: "example", "aria-label": "Start from" }, el("option", { value: EMPTY, text: "an empty model" }));
  for (const dataset of [...new Set(examples.map((e) => e.request.dataset.name || "uploads"))]) {
    const group = el("optgroup", { label: dataset });
    examples.filter((e) => (e.request.dataset.name || "uploads") === dataset).forEach((e) => group.append(el("option", { value: e.key, text: e.name })));
    start.append(group);
  }
  const tabBuilder = el("button", { type: "button", role: "tab", "data-tab": "builder", text: "Builder" });
  const tabJson = el("button", { type: "button", role: "tab", "data-tab": "json", text: "JSON" });
  const builder = el("div", { class: "builder", role: "tabpanel", "aria-label": "Builder" });
  const json = el("textarea", { name: "request", rows: 30, spellcheck: "false", "aria-label": "Request (POST /train body)" });
  const jsonProblem = el("div", { "data-json-problem": "" });
  const jsonPanel = el(
    "div",
    { class: "json-panel", role: "tabpanel", "aria-label": "JSON", hidden: true },
    jsonProblem,
    el("p", { class: "small muted", text: "The body the builder sends to POST /train. Edit it here; the Builder tab shows it again when the form can." }),
    json,
  );

  const status = el("div", { class: "preview-status", "aria-live": "polite", "data-preview-state": "pending" });
  const headline = el("div", { class: "preview-total" });
  const facts = el("dl", { class: "facts small" });
  const table = el("div", { class: "table-scroll" });
  const printed = el("pre");
  const problems = el("div", { class: "problems", "data-problems": "" });
  const preview = el(
    "aside",
    { class: "panel preview", "aria-label": "Preview" },
    el("h2", { text: "Preview" }),
    status,
    headline,
    problems,
    table,
    facts,
    el("details", {}, el("summary", { text: "As model.summary() prints it" }), printed),
  );

  const trainProblem = el("div");
  const submit = el("button", { class: "primary", type: "button", text: "Start training" });

  // ---- the form --------------------------------------------------------------------------------------------------

  function changed() {
    schedulePreview();
  }
  const ctx = { options, changed };
  const datasetCtx = {
    options,
    changed: () => {
      syncInputShape();
      inputShown();
      schedulePreview();
    },
  };
  let inputShown = () => {};

  function block(title, path, ...children) {
    return el("section", { class: "panel block", "data-block": path }, el("h2", {}, title, errorSlot(path)), ...children);
  }

  function datasetBlock() {
    const request = state.request;
    const choice = choiceOf(request.dataset);
    const select = el("select", { name: "dataset", "data-path": "dataset", "aria-label": "Dataset" });
    options.datasets.forEach((option, index) => {
      const label = `${option.name}${option.source === "upload" ? " (upload)" : ""}${option.available_offline ? "" : " (not in Keras' cache)"}`;
      select.append(el("option", { value: String(index), text: label }));
    });
    select.value = String(options.datasets.indexOf(choice));
    select.addEventListener("change", () => {
      const picked = options.datasets[Number(select.value)];
      const kept = Object.fromEntries(Object.entries(request.dataset).filter(([key]) => !["name", "id", "rescale", "one_hot", "reshape", ...SEQUENCE_FIELDS].includes(key)));
      request.dataset = { ...picked.dataset, ...kept };
      const rescale = rescaleFor(picked);
      if (rescale !== undefined) request.dataset.rescale = rescale;
      if (picked.sequences) Object.assign(request.dataset, BOOK_SEQUENCES);
      syncInputShape();
      draw('[name="dataset"]');
    });
    const about = el("div", { class: "small muted" });
    const input = el("span", { class: "input-shape", "data-path": "model.input_shape" });
    inputShown = () => {
      const current = choiceOf(request.dataset);
      input.textContent = shape(request.model.input_shape);
      about.textContent = current
        ? `${current.description} ${fmt(current.num_classes)} classes${current.class_names ? ` (${current.class_names.slice(0, 4).join(", ")}${current.class_names.length > 4 ? ", …" : ""})` : ""}.`
        : "";
    };
    inputShown();
    const sequences = choice && choice.sequences;
    const texts = choice && choice.vocabulary_size;
    const fields = options.dataset
      .filter((field) => !["name", "id"].includes(field.name))
      .filter((field) => sequences || !SEQUENCE_FIELDS.includes(field.name))
      .filter((field) => field.name !== "one_hot" || sequences || texts)
      .map((field) => fieldEditor(field, request.dataset, pathOf("dataset", field.name), datasetCtx));
    return block(
      "Dataset",
      "dataset",
      el(
        "div",
        { class: "fields" },
        el("label", { class: "field" }, el("span", { class: "field-name", text: "dataset" }), select, errorSlot("dataset.name"), errorSlot("dataset.id")),
        el("div", { class: "field", "data-field": "model.input_shape" }, el("span", { class: "field-name", text: "input shape (the model's input)" }), input, errorSlot("model.input_shape")),
      ),
      about,
      el("div", { class: "fields" }, fields),
    );
  }

  function layerCard(layer, index, count) {
    const path = `model.layers[${index}]`;
    const nth = index + 1;
    const type = el("select", { name: pathOf(path, "type"), "data-path": pathOf(path, "type"), "aria-label": `Layer ${nth} type` });
    layerTypes.forEach((t) => type.append(el("option", { value: t, text: t })));
    type.value = layer.type;
    type.addEventListener("change", () => {
      state.request.model.layers[index] = retyped("layers", layer, type.value, ctx);
      draw(`[name="${pathOf(path, "type")}"]`);
    });
    const button = (action, text, label, disabled) =>
      el("button", { type: "button", class: "icon", "data-action": action, "data-index": index, "aria-label": label, title: label, disabled, text });
    const up = button("up", "↑", `Move layer ${nth} up`, index === 0);
    const down = button("down", "↓", `Move layer ${nth} down`, index === count - 1);
    const remove = button("remove", "✕", `Remove layer ${nth}`, false);
    up.addEventListener("click", () => move(index, -1));
    down.addEventListener("click", () => move(index, 1));
    remove.addEventListener("click", () => {
      state.request.model.layers.splice(index, 1);
      const layers = state.request.model.layers.length;
      draw(layers ? `[data-action="remove"][data-index="${Math.min(index, layers - 1)}"]` : '[name="add-layer"]');
    });
    const nameField = options.layers.find((o) => o.type === layer.type).fields.find((f) => f.name === "name");
    const option = options.layers.find((o) => o.type === layer.type);
    return el(
      "li",
      { class: "layer", "data-layer-index": index, "data-type": layer.type },
      el(
        "div",
        { class: "layer-head" },
        el("span", { class: "layer-number", text: String(nth) }),
        type,
        nameField ? fieldEditor(nameField, layer, pathOf(path, "name"), ctx) : null,
        el("span", { class: "layer-out small", "data-layer-out": index }),
        el("span", { class: "layer-actions" }, up, down, remove),
      ),
      el("div", { class: "small muted layer-about", text: option.description }),
      el("div", { class: "fields" }, fieldEditors("layers", layer, path, ctx, ["name"])),
      errorSlot(path),
    );
  }

  function move(index, step) {
    const layers = state.request.model.layers;
    const to = index + step;
    [layers[index], layers[to]] = [layers[to], layers[index]];
    const action = step < 0 ? "up" : "down";
    const stays = (step < 0 && to > 0) || (step > 0 && to < layers.length - 1);
    draw(`[data-action="${stays ? action : step < 0 ? "down" : "up"}"][data-index="${to}"]`);
  }

  function layersBlock() {
    const layers = state.request.model.layers;
    const list = el("ol", { class: "layers" }, layers.map((layer, index) => layerCard(layer, index, layers.length)));
    const kind = el("select", { name: "add-layer", "aria-label": "Type of the layer to add" });
    layerTypes.forEach((t) => kind.append(el("option", { value: t, text: t })));
    kind.value = state.lastAdded || "dense";
    const full = layers.length >= options.limits.max_layers;
    const add = el("button", { type: "button", "data-action": "add-layer", disabled: full, text: "Add layer" });
    add.addEventListener("click", () => {
      state.lastAdded = kind.value;
      layers.push({ type: kind.value });
      draw(`[data-layer-index="${layers.length - 1}"] .fields input, [data-layer-index="${layers.length - 1}"] .fields select, [name="model.layers[${layers.length - 1}].type"]`);
    });
    return block(
      "Layers",
      "model",
      el("p", { class: "small muted", text: "A keras.Sequential model, its input first. Each layer's output shape and parameters come from the preview." }),
      errorSlot("model.layers"),
      list,
      el(
        "div",
        { class: "toolbar add-layer" },
        kind,
        add,
        full ? el("span", { class: "small muted", text: `at most ${options.limits.max_layers} layers here` }) : null,
      ),
    );
  }

  function compileBlock() {
    const compile = state.request.compile;
    const current = compile.optimizer;
    const holder = typeof current === "string" ? { type: current } : current;
    const select = el("select", { name: "compile.optimizer.type", "data-path": "compile.optimizer", "aria-label": "Optimizer" });
    options.optimizers.forEach((o) => select.append(el("option", { value: o.type, text: o.type })));
    select.value = holder.type;
    select.addEventListener("change", () => {
      compile.optimizer = select.value; // Keras' defaults for the new optimizer
      draw('[name="compile.optimizer.type"]');
    });
    // The optimizer stays a name ("adam") until an option is set, and becomes one again when none is.
    const optimizerCtx = {
      options,
      changed: () => {
        compile.optimizer = Object.keys(holder).length > 1 ? holder : holder.type;
        changed();
      },
    };
    const optimizer = options.optimizers.find((o) => o.type === holder.type);
    const metrics = Array.isArray(compile.metrics) ? compile.metrics : compile.metrics === undefined ? [...fieldOf("compile", "metrics").default] : [compile.metrics];
    const boxes = options.metrics.map((metric) => {
      const box = el("input", { type: "checkbox", name: "compile.metrics", value: metric, "data-path": "compile.metrics" });
      box.checked = metrics.includes(metric);
      box.addEventListener("change", () => {
        const kept = metrics.filter((m) => m !== metric);
        if (box.checked) kept.push(metric);
        metrics.splice(0, metrics.length, ...kept);
        compile.metrics = metrics;
        changed();
      });
      return el("label", { class: "check" }, box, metric);
    });
    return block(
      "Compile",
      "compile",
      el(
        "div",
        { class: "fields" },
        el("label", { class: "field" }, el("span", { class: "field-name", text: "optimizer" }), select, errorSlot("compile.optimizer.type")),
        fieldEditors("optimizers", holder, "compile.optimizer", optimizerCtx),
      ),
      el("div", { class: "small muted", text: optimizer ? optimizer.description : "" }),
      errorSlot("compile.optimizer"),
      el("div", { class: "fields" }, fieldEditor(fieldOf("compile", "loss"), compile, "compile.loss", ctx)),
      el("div", { class: "field", "data-field": "compile.metrics" }, el("span", { class: "field-name", text: "metrics" }), el("div", { class: "checks" }, boxes), errorSlot("compile.metrics")),
    );
  }

  function validationEditor(fit) {
    const mode = fit.validation_data === "test" ? "test" : fit.validation_data && typeof fit.validation_data === "object" ? "held_out" : fit.validation_split > 0 ? "split" : "none";
    const select = el("select", { name: "fit.validation", "aria-label": "Validation" });
    VALIDATION.forEach(([value, text]) => select.append(el("option", { value, text })));
    select.value = mode;
    select.addEventListener("change", () => {
      delete fit.validation_split;
      delete fit.validation_data;
      if (select.value === "split") fit.validation_split = 0.2;
      if (select.value === "held_out") fit.validation_data = { size: 0.2, random_state: 42 };
      if (select.value === "test") fit.validation_data = "test";
      draw('[name="fit.validation"]');
    });
    const parts = [el("label", { class: "field" }, el("span", { class: "field-name", text: "validate on" }), select, errorSlot("fit.validation_data"))];
    if (mode === "split") parts.push(fieldEditor(fieldOf("fit", "validation_split"), fit, "fit.validation_split", ctx, { label: "fraction" }));
    if (mode === "held_out") {
      const heldOut = fieldOf("fit", "validation_data").or.find((form) => form.type === "object" && form.fields);
      heldOut.fields.forEach((field) => parts.push(fieldEditor(field, fit.validation_data, pathOf("fit.validation_data", field.name), ctx)));
    }
    return parts;
  }

  function callbacksEditor(fit) {
    const callbacks = Array.isArray(fit.callbacks) ? fit.callbacks : [];
    const cards = callbacks.map((callback, index) => {
      const path = `fit.callbacks[${index}]`;
      const remove = el("button", { type: "button", class: "icon", "data-action": "remove-callback", "aria-label": `Remove callback ${index + 1}`, title: "Remove", text: "✕" });
      remove.addEventListener("click", () => {
        callbacks.splice(index, 1);
        if (!callbacks.length) delete fit.callbacks;
        draw('[name="add-callback"]');
      });
      return el(
        "li",
        { class: "callback", "data-callback-index": index },
        el("div", { class: "layer-head" }, el("strong", { text: callback.type }), el("span", { class: "layer-actions" }, remove)),
        el("div", { class: "fields" }, fieldEditors("callbacks", callback, path, ctx)),
        errorSlot(path),
      );
    });
    const kind = el("select", { name: "add-callback", "aria-label": "Callback to add" });
    options.callbacks.forEach((o) => kind.append(el("option", { value: o.type, text: o.type })));
    const add = el("button", { type: "button", "data-action": "add-callback", text: "Add callback" });
    add.addEventListener("click", () => {
      fit.callbacks = [...callbacks, { type: kind.value }];
      draw(`[data-callback-index="${fit.callbacks.length - 1}"] input, [name="add-callback"]`);
    });
    return [el("h3", { text: "Callbacks" }), errorSlot("fit.callbacks"), el("ol", { class: "callbacks" }, cards), el("div", { class: "toolbar" }, kind, add)];
  }

  function fitBlock() {
    const fit = state.request.fit;
    const epochs = { ...fieldOf("fit", "epochs") };
    epochs.maximum = Math.min(epochs.maximum ?? Infinity, options.limits.max_epochs);
    return block(
      "Fit",
      "fit",
      el(
        "div",
        { class: "fields" },
        fieldEditor(epochs, fit, "fit.epochs", ctx),
        fieldEditor(fieldOf("fit", "batch_size"), fit, "fit.batch_size", ctx, { label: "batch size" }),
        fieldEditor(fieldOf("fit", "seed"), fit, "fit.seed", ctx),
        fieldEditor(fieldOf("fit", "shuffle"), fit, "fit.shuffle", ctx),
      ),
      el("div", { class: "fields" }, validationEditor(fit)),
      ...callbacksEditor(fit),
    );
  }

  function jobBlock() {
    const request = state.request;
    return el(
      "div",
      { class: "fields" },
      fieldEditor(fieldOf("request", "name"), request, "name", ctx, { label: "job name" }),
      fieldEditor(fieldOf("model", "name"), request.model, "model.name", ctx, { label: "model name" }),
    );
  }

  function draw(focus) {
    builder.replaceChildren(el("div", { class: "panel block" }, jobBlock()), datasetBlock(), layersBlock(), compileBlock(), fitBlock());
    if (focus) {
      const target = builder.querySelector(focus);
      if (target) target.focus();
    }
    schedulePreview();
  }

  // ---- the preview -----------------------------------------------------------------------------------------------

  function setState(name, text) {
    shared.state = name;
    status.dataset.previewState = name;
    status.textContent = text;
  }

  function currentBody() {
    if (state.tab === "builder") return state.request;
    try {
      return JSON.parse(json.value);
    } catch (error) {
      throw new ApiError(422, { error: { message: `The request is not valid JSON: ${error.message}`, errors: [] } });
    }
  }

  function schedulePreview() {
    clearTimeout(state.timer);
    if (state.controller) state.controller.abort();
    setState("pending", "Checking…");
    state.timer = setTimeout(runPreview, PREVIEW_DELAY_MS);
  }

  function showProblems(list) {
    problems.replaceChildren(...(list.length ? [el("ul", {}, list.map((p) => el("li", { "data-problem-path": p.path }, p.path ? el("code", { text: p.path }) : null, p.path ? " " : null, p.message)))] : []));
  }

  function clearSummary() {
    headline.replaceChildren();
    table.replaceChildren();
    facts.replaceChildren();
    printed.textContent = "";
    builder.querySelectorAll("[data-layer-out]").forEach((out) => (out.textContent = ""));
  }

  async function runPreview() {
    const sequence = ++state.sequence;
    const controller = (state.controller = new AbortController());
    let body;
    try {
      body = currentBody();
    } catch (error) {
      clearSummary();
      showProblems([{ path: "", message: error.message }]);
      shared.problems = [{ path: "", message: error.message }];
      setState("invalid", "Not JSON yet.");
      return;
    }
    shared.request = body;
    try {
      const answer = await api("/train?dry_run=true", { method: "POST", body, signal: controller.signal });
      if (sequence !== state.sequence) return;
      shared.preview = answer;
      shared.problems = [];
      clearErrors(builder);
      showProblems([]);
      headline.replaceChildren(el("span", { class: "muted", text: "Total params " }), el("strong", { "data-preview-total": answer.total_params, text: fmt(answer.total_params) }));
      table.replaceChildren(summaryTable(answer));
      facts.replaceChildren(
        ...[
          ["Output", shape(answer.build.output_shape.map((d) => (d === null ? "None" : d)))],
          ["Activations", `${bytes(answer.build.activation_bytes)} per sample`],
          ["Training data", bytes(answer.build.training_data_bytes)],
        ].flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]),
      );
      printed.textContent = answer.text;
      answer.layers.forEach((layer, index) => {
        const out = builder.querySelector(`[data-layer-out="${index}"]`);
        if (out) out.textContent = `${layer.name} → ${shape(layer.output_shape.map((d) => (d === null ? "None" : d)))} · ${fmt(layer.params)} params`;
      });
      setState("ok", "The model builds on this dataset.");
    } catch (error) {
      if (controller.signal.aborted || sequence !== state.sequence) return;
      clearSummary();
      if (error instanceof ApiError && error.status === 422) {
        const unplaced = state.tab === "builder" ? placeErrors(builder, error.errors) : error.errors;
        shared.problems = error.errors;
        showProblems(unplaced);
        const count = error.errors.length;
        setState("invalid", `${count} problem${count === 1 ? "" : "s"}${state.tab === "builder" ? ", each shown at its field" : ""}.`);
      } else {
        showProblems([{ path: "", message: error.message }]);
        setState("failed", "The preview could not be had.");
      }
    }
  }

  // ---- tabs, start, train ----------------------------------------------------------------------------------------

  function showTab(tab) {
    state.tab = tab;
    tabBuilder.setAttribute("aria-selected", String(tab === "builder"));
    tabJson.setAttribute("aria-selected", String(tab === "json"));
    builder.hidden = tab !== "builder";
    jsonPanel.hidden = tab !== "json";
  }

  tabJson.addEventListener("click", () => {
    if (state.tab === "json") return;
    json.value = JSON.stringify(state.request, null, 2);
    jsonProblem.replaceChildren();
    showTab("json");
    schedulePreview();
  });
  tabBuilder.addEventListener("click", () => {
    if (state.tab === "builder") return;
    let body;
    try {
      body = JSON.parse(json.value);
    } catch (error) {
      jsonProblem.replaceChildren(errorBox({ message: `The builder cannot show this request: it is not valid JSON (${error.message}).` }));
      return;
    }
    const reason = whyNot(body);
    if (reason) {
      jsonProblem.replaceChildren(errorBox({ message: `The builder cannot show this request: ${reason}` }));
      return;
    }
    jsonProblem.replaceChildren();
    adopt(body);
    showTab("builder");
    draw();
  });
  json.addEventListener("input", schedulePreview);

  function load(key) {
    if (key === EMPTY) adopt(emptyRequest());
    else adopt(structuredClone(examples.find((e) => e.key === key).request));
    if (state.tab === "json") json.value = JSON.stringify(state.request, null, 2);
    draw();
  }
  start.addEventListener("change", () => load(start.value));

  submit.addEventListener("click", async () => {
    trainProblem.replaceChildren();
    let body;
    try {
      body = currentBody();
    } catch (error) {
      trainProblem.replaceChildren(errorBox(error));
      return;
    }
    submit.disabled = true;
    try {
      const created = await api("/train", { method: "POST", body });
      location.hash = `#/jobs/${created.job_id}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 422 && state.tab === "builder") showProblems(placeErrors(builder, error.errors));
      trainProblem.replaceChildren(errorBox(error));
      submit.disabled = false;
    }
  });

  const all = el("button", { type: "button", text: "Train all six optimizers on digits and compare" });
  all.addEventListener("click", async () => {
    all.disabled = true;
    try {
      const epochs = state.request && state.request.fit ? state.request.fit.epochs : undefined;
      const ids = await queueOptimizerComparison(epochs);
      location.hash = `#/compare?jobs=${ids.join(",")}`;
    } catch (error) {
      trainProblem.replaceChildren(errorBox(error));
      all.disabled = false;
    }
  });

  view.append(
    el("h1", {}, "New training job"),
    el(
      "p",
      { class: "muted" },
      "Put a Keras model together layer by layer: the preview builds it on the dataset's shapes as you go, as model.summary() would show it. Start from the chapter's model or any of its experiments; digits train offline in seconds.",
    ),
    el(
      "div",
      { class: "toolbar" },
      el("label", { class: "field inline" }, el("span", { class: "field-name", text: "Start from" }), start),
      el("div", { class: "tabs", role: "tablist", "aria-label": "Request editor" }, tabBuilder, tabJson),
    ),
    el("div", { class: "beside builder-layout" }, el("div", {}, builder, jsonPanel), preview),
    trainProblem,
    el("div", { class: "toolbar" }, submit, el("a", { href: "/docs#/training", class: "small", text: "request reference" })),
    el("div", { class: "toolbar" }, all, el("span", { class: "small muted", text: "uses the epochs above" })),
  );
  start.value = examples.some((e) => e.key === query.get("example")) ? query.get("example") : START_EXAMPLE;
  showTab("builder");
  load(start.value);
  return () => {
    clearTimeout(state.timer);
    if (state.controller) state.controller.abort();
  };
}
