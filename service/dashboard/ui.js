// Small DOM helpers shared by the pages. Text is always set as text, never as HTML: names may be anything.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function badge(status) {
  return el("span", { class: `badge ${status}`, "data-status": status, text: status });
}

export function progress(job) {
  const { epoch, epochs } = job.progress;
  const fraction = epochs ? Math.min(1, epoch / epochs) : 0;
  const bar = el("span", { class: "progress", role: "progressbar", "aria-valuenow": epoch, "aria-valuemax": epochs });
  bar.append(el("span", { style: `width:${(fraction * 100).toFixed(1)}%` }));
  return el("span", { class: "progress-cell" }, bar, el("span", { class: "progress-text", text: `${epoch}/${epochs}` }));
}

export function fmt(value, digits = 4) {
  if (value === undefined || value === null) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en-US") : value.toFixed(digits);
  return String(value);
}

// A number as a reader wants it in a table: integers whole, very small or large ones (learning rates) in
// exponent form, the rest to four significant digits.
export function number(value) {
  if (Number.isInteger(value)) return String(value);
  const size = Math.abs(value);
  if (size !== 0 && (size < 1e-3 || size >= 1e6)) return value.toExponential(2).replace(/\.?0+e/, "e").replace("e+", "e");
  return String(Number(value.toPrecision(4)));
}

// Any JSON value of a request in one short line: an optimizer object reads "sgd (momentum 0.9, nesterov)".
export function compact(value) {
  if (value === undefined || value === null) return "–";
  if (typeof value === "number") return number(value);
  if (typeof value !== "object") return String(value);
  if (Array.isArray(value)) return `[${value.map(compact).join(", ")}]`;
  const { type, ...rest } = value;
  const options = Object.entries(rest).map(([key, option]) => (option === true ? key : option === false ? `no ${key}` : `${key} ${compact(option)}`));
  if (type === undefined) return `{${options.join(", ")}}`;
  return options.length ? `${compact(type)} (${options.join(", ")})` : compact(type);
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function shape(list) {
  return list ? `(${list.join(", ")})` : "–";
}

// A model's layers as Keras' model.summary() tabulates them (GET /models/{id}/summary, or a preview's answer).
export function summaryTable(summary) {
  return el(
    "table",
    { class: "summary" },
    el("thead", {}, el("tr", {}, el("th", { text: "Layer (type)" }), el("th", { text: "Output shape" }), el("th", { class: "num", text: "Param #" }))),
    el(
      "tbody",
      {},
      summary.layers.map((layer) =>
        el(
          "tr",
          { "data-layer": layer.name },
          el("td", { text: `${layer.name} (${layer.type})` }),
          el("td", { text: `(${layer.output_shape.map((d) => (d === null ? "None" : d)).join(", ")})` }),
          el("td", { class: "num", "data-params": layer.params, text: fmt(layer.params) }),
        ),
      ),
    ),
    el(
      "tfoot",
      {},
      el("tr", {}, el("td", { colspan: 2, text: "Total params" }), el("td", { class: "num", "data-total": summary.total_params, text: fmt(summary.total_params) })),
      el("tr", {}, el("td", { colspan: 2, text: "Trainable params" }), el("td", { class: "num", "data-trainable": summary.trainable_params, text: fmt(summary.trainable_params) })),
      el("tr", {}, el("td", { colspan: 2, text: "Non-trainable params" }), el("td", { class: "num", text: fmt(summary.non_trainable_params) })),
    ),
  );
}

export function errorBox(error) {
  const box = el("div", { class: "error-box", role: "alert" }, el("strong", { text: error.message || String(error) }));
  if (error.errors && error.errors.length > 1) {
    box.append(el("ul", {}, error.errors.map((item) => el("li", {}, el("code", { text: item.path || "body" }), " ", item.message))));
  } else if (error.errors && error.errors.length === 1 && error.errors[0].path) {
    box.append(el("div", { class: "small" }, "at ", el("code", { text: error.errors[0].path })));
  }
  return box;
}

export function lastRow(history) {
  return history && history.length ? history[history.length - 1] : {};
}

export function params(hash) {
  const index = hash.indexOf("?");
  return new URLSearchParams(index < 0 ? "" : hash.slice(index + 1));
}
