// A new training job, starting from one of the chapter's examples (GET /examples): pick one, adjust its name,
// epochs and optimizer or edit the request itself, and send it to POST /train.

import { api } from "../api.js";
import { el, errorBox } from "../ui.js";
import { queueOptimizerComparison } from "./compare.js";

const OPTIMIZERS = {
  sgd: "sgd",
  momentum: { type: "sgd", learning_rate: 0.01, momentum: 0.9 },
  nesterov: { type: "sgd", learning_rate: 0.01, momentum: 0.9, nesterov: true },
  adagrad: "adagrad",
  rmsprop: "rmsprop",
  adam: "adam",
  adamw: "adamw",
  nadam: "nadam",
};

function optimizerKey(optimizer) {
  const text = JSON.stringify(optimizer);
  return Object.keys(OPTIMIZERS).find((key) => JSON.stringify(OPTIMIZERS[key]) === text) || "";
}

export async function render(view, { query, isCurrent }) {
  const examples = (await api("/examples")).data;
  if (!isCurrent()) return null;
  const example = el("select", { name: "example" });
  for (const dataset of ["digits", "fashion_mnist"]) {
    const group = el("optgroup", { label: dataset });
    examples.filter((e) => e.request.dataset.name === dataset).forEach((e) => group.append(el("option", { value: e.key, text: e.name })));
    example.append(group);
  }
  example.value = examples.some((e) => e.key === query.get("example")) ? query.get("example") : "digits_relu_adam";
  const name = el("input", { name: "name", size: 28 });
  const epochs = el("input", { name: "epochs", type: "number", min: 1, max: 1000, style: "width:90px" });
  const optimizer = el("select", { name: "optimizer" }, el("option", { value: "", text: "as in the request" }), Object.keys(OPTIMIZERS).map((k) => el("option", { value: k, text: k })));
  const request = el("textarea", { name: "request", rows: 26, spellcheck: "false" });
  const problem = el("div");
  const submit = el("button", { class: "primary", type: "submit", text: "Start training" });

  function current() {
    return JSON.parse(request.value);
  }
  function load() {
    const body = structuredClone(examples.find((e) => e.key === example.value).request);
    request.value = JSON.stringify(body, null, 2);
    fromRequest();
  }
  function fromRequest() {
    try {
      const body = current();
      name.value = body.name || "";
      epochs.value = body.fit && body.fit.epochs ? body.fit.epochs : "";
      optimizer.value = optimizerKey(body.compile && body.compile.optimizer);
    } catch {
      // being edited: the fields catch up once it is JSON again
    }
  }
  function toRequest() {
    try {
      const body = current();
      body.name = name.value;
      body.fit = { ...(body.fit || {}), epochs: Number(epochs.value) || body.fit.epochs };
      if (optimizer.value) body.compile.optimizer = structuredClone(OPTIMIZERS[optimizer.value]);
      request.value = JSON.stringify(body, null, 2);
    } catch (error) {
      problem.replaceChildren(errorBox({ message: `The request is not valid JSON: ${error.message}` }));
    }
  }
  example.addEventListener("change", load);
  [name, epochs, optimizer].forEach((field) => field.addEventListener("change", toRequest));
  request.addEventListener("change", fromRequest);

  const form = el(
    "form",
    { class: "panel new-job" },
    el(
      "div",
      { class: "fields" },
      el("label", { class: "field" }, "Start from", example),
      el("label", { class: "field" }, "Job name", name),
      el("label", { class: "field" }, "Epochs", epochs),
      el("label", { class: "field" }, "Optimizer", optimizer),
    ),
    el("label", { class: "field" }, "Request (POST /train body)", request),
    el("div", { class: "toolbar", style: "margin-top:12px" }, submit, el("a", { href: "/docs#/training", class: "small", text: "request reference" })),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    toRequest();
    let body;
    try {
      body = current();
    } catch (error) {
      problem.replaceChildren(errorBox({ message: `The request is not valid JSON: ${error.message}` }));
      return;
    }
    submit.disabled = true;
    try {
      const created = await api("/train", { method: "POST", body });
      location.hash = `#/jobs/${created.job_id}`;
    } catch (error) {
      problem.replaceChildren(errorBox(error));
      submit.disabled = false;
    }
  });

  const all = el("button", { text: "Train all six optimizers on digits and compare" });
  all.addEventListener("click", async () => {
    all.disabled = true;
    try {
      const ids = await queueOptimizerComparison(Number(epochs.value) || undefined);
      location.hash = `#/compare?jobs=${ids.join(",")}`;
    } catch (error) {
      problem.replaceChildren(errorBox(error));
      all.disabled = false;
    }
  });

  view.append(
    el("h1", {}, "New training job"),
    el("p", { class: "muted" }, "The chapter's experiments: a sigmoid or relu hidden layer, then the relu model with each optimizer it compares. Digits train offline in seconds; Fashion-MNIST needs Keras' dataset cache."),
    problem,
    form,
    el("div", { class: "toolbar" }, all, el("span", { class: "small muted", text: "uses the epochs above" })),
  );
  load();
  return null;
}
