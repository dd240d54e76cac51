// The model builder's parts, made from what GET /spec/options publishes of the training request: an input for any
// field of the spec (a number input with its bounds, a select of its choices, a checkbox, a nested object such as
// a bidirectional layer's recurrent layer or a learning-rate schedule), each named by its JSON path as the API's
// errors write it (model.layers[1].units), and the errors of a 422 put back beside the input their path names.
//
// The request itself is the one state: an input writes its value into the object it edits (or removes the key when
// emptied, so the spec's default applies), and a field the form does not show stays in the request as it was.

import { el, fmt } from "./ui.js";

let ids = 0;

export function pathOf(base, key) {
  if (typeof key === "number") return `${base}[${key}]`;
  return base ? `${base}.${key}` : key;
}

// One step up a path: model.layers[1].units → model.layers[1] → model.layers → model → "".
export function parentPath(path) {
  const match = path.match(/^(.*?)(?:\.[^.[\]]+|\[\d+\])$/);
  return match ? match[1] : "";
}

function defaultText(field) {
  if (field.required) return "required";
  if (field.default === null || field.default === undefined) return "none";
  return typeof field.default === "object" ? JSON.stringify(field.default) : String(field.default);
}

function boundsText(field) {
  const low = field.minimum !== undefined ? `≥ ${fmt(field.minimum)}` : field.exclusive_minimum !== undefined ? `> ${fmt(field.exclusive_minimum)}` : "";
  const high = field.maximum !== undefined ? `≤ ${fmt(field.maximum)}` : field.exclusive_maximum !== undefined ? `< ${fmt(field.exclusive_maximum)}` : "";
  return [low, high].filter(Boolean).join(", ");
}

// Where a field's problems are shown: beside its input, found by data-error-for.
export function errorSlot(path) {
  return el("span", { class: "field-error", id: `error-${++ids}`, "data-error-for": path, hidden: true });
}

function labelled(field, path, control, { label, wide } = {}) {
  const slot = errorSlot(path);
  const inputs = control.matches("input, select") ? [control] : [...control.querySelectorAll("input, select")];
  inputs.forEach((input) => input.setAttribute("aria-describedby", slot.id));
  const title = [field.description, boundsText(field), `${field.required ? "" : "default: "}${defaultText(field)}`].filter(Boolean).join(" · ");
  return el(
    "label",
    { class: `field${wide ? " wide" : ""}`, "data-field": path, title },
    el("span", { class: "field-name", text: label || field.name.replaceAll("_", " ") }),
    control,
    slot,
  );
}

function setOrRemove(holder, key, value) {
  if (value === undefined) delete holder[key];
  else holder[key] = value;
}

function numberInput(field, value, path, onValue, extra = {}) {
  const input = el("input", {
    type: "number",
    name: path,
    "data-path": path,
    step: field.type === "integer" ? 1 : "any",
    min: field.minimum ?? field.exclusive_minimum,
    max: field.maximum ?? field.exclusive_maximum,
    placeholder: defaultText(field),
    ...extra,
  });
  if (typeof value === "number") input.value = String(value);
  input.addEventListener("input", () => onValue(input.value === "" ? undefined : Number(input.value)));
  return input;
}

function selectInput(choices, value, path, onValue, { empty } = {}) {
  const select = el("select", { name: path, "data-path": path });
  if (empty) select.append(el("option", { value: "", text: empty }));
  const shown = [...choices];
  if (value !== undefined && value !== null && !shown.includes(value)) shown.push(value); // the API says what is wrong
  shown.forEach((choice) => select.append(el("option", { value: String(choice), text: String(choice) })));
  select.value = value === undefined || value === null ? (empty ? "" : String(choices[0])) : String(value);
  select.addEventListener("change", () => onValue(select.value === "" ? undefined : select.value));
  return select;
}

// Comma-separated numbers, e.g. a shape "28, 28, 1"; anything else goes as typed, for the API to say what is wrong.
function listInput(field, value, path, onValue) {
  const input = el("input", { type: "text", name: path, "data-path": path, placeholder: `${defaultText(field)} · e.g. 28, 28, 1`, size: 14 });
  if (Array.isArray(value)) input.value = value.join(", ");
  input.addEventListener("input", () => {
    const text = input.value.trim();
    if (!text) return onValue(undefined);
    const parts = text.split(/[\s,×x]+/).filter(Boolean).map(Number);
    onValue(parts.every((n) => Number.isFinite(n)) ? parts : input.value);
  });
  return input;
}

// An integer or a pair of them (a kernel size 3 or 3 × 5): two number inputs, the second left empty for one number.
function pairInput(field, value, path, onValue) {
  const [first, second] = Array.isArray(value) ? value : [value, undefined];
  const a = numberInput(field, first, path, changed);
  const b = numberInput(field, second, `${path}[1]`, changed, { placeholder: "same", "aria-label": `${field.name} (second)`, "data-path": path });
  function changed() {
    if (a.value === "" && b.value === "") return onValue(undefined);
    if (b.value === "") return onValue(Number(a.value));
    return onValue([a.value === "" ? null : Number(a.value), Number(b.value)]);
  }
  return el("span", { class: "pair" }, a, el("span", { class: "muted", text: "×" }), b);
}

function isPair(field) {
  return field.type === "integer" && field.or.some((form) => form.type === "list" && form.min_items === 2 && form.max_items === 2);
}

function objectAlternative(field) {
  return field.or.find((form) => form.type === "object" && form.of);
}

// One field of ``holder`` (a layer, an optimizer, …): the input its form calls for. ``ctx.changed()`` is called
// after every edit; ``ctx.options`` is GET /spec/options' answer.
export function fieldEditor(field, holder, path, ctx, { label } = {}) {
  const key = field.name;
  const onValue = (value) => {
    setOrRemove(holder, key, value);
    ctx.changed();
  };
  const value = holder[key];
  if (field.type === "object" && field.of) return objectEditor(field, holder, path, ctx, label);
  const schedule = objectAlternative(field);
  if (schedule && (field.type === "number" || field.type === "integer")) return numberOrObject(field, schedule, holder, path, ctx, label);
  let control;
  if (field.type === "boolean") {
    control = el("input", { type: "checkbox", name: path, "data-path": path });
    control.checked = Boolean(value ?? field.default);
    control.addEventListener("change", () => onValue(control.checked));
    return labelled(field, path, control, { label });
  }
  if (isPair(field)) control = pairInput(field, value, path, onValue);
  else if (field.type === "integer" || field.type === "number") control = numberInput(field, value, path, onValue);
  else if (field.type === "choice") {
    const optional = !field.required && (field.default === null || field.default === undefined);
    control = selectInput(field.choices, value ?? field.default, path, onValue, { empty: optional ? "none" : undefined });
  } else if (field.type === "list" && field.items && ["integer", "number"].includes(field.items.type)) control = listInput(field, value, path, onValue);
  else {
    control = el("input", { type: "text", name: path, "data-path": path, placeholder: defaultText(field), size: 14 });
    if (typeof value === "string") control.value = value;
    control.addEventListener("input", () => onValue(control.value === "" ? undefined : control.value));
  }
  return labelled(field, path, control, { label });
}

// The fields of one object of a section (a layer, an optimizer, a schedule, a callback), but those in ``skip``.
export function fieldsOf(section, type, ctx) {
  const option = ctx.options[section].find((o) => o.type === type);
  return option ? option.fields : [];
}

export function fieldEditors(section, holder, path, ctx, skip = []) {
  return fieldsOf(section, holder.type, ctx)
    .filter((field) => !skip.includes(field.name))
    .map((field) => fieldEditor(field, holder, pathOf(path, field.name), ctx));
}

// Keep what the new type also has (a layer's units and activation, its name), drop the rest.
export function retyped(section, object, type, ctx) {
  const kept = new Set(fieldsOf(section, type, ctx).map((field) => field.name));
  return Object.fromEntries([["type", type], ...Object.entries(object || {}).filter(([key]) => key !== "type" && kept.has(key))]);
}

// A nested object of one of several types (a bidirectional layer's recurrent layer): its type, then its fields.
function objectEditor(field, holder, path, ctx, label) {
  const { name: key, choices, of: section } = field;
  if (!holder[key] || typeof holder[key] !== "object") holder[key] = { type: choices[0] };
  const fields = el("div", { class: "fields nested" });
  const draw = () => fields.replaceChildren(...fieldEditors(section, holder[key], path, ctx));
  const type = selectInput(choices, holder[key].type, pathOf(path, "type"), (value) => {
    holder[key] = retyped(section, holder[key], value, ctx);
    draw();
    ctx.changed();
  });
  draw();
  return el(
    "div",
    { class: "object-field", "data-field": path },
    el("label", { class: "field" }, el("span", { class: "field-name", text: (label || key).replaceAll("_", " ") }), type, errorSlot(pathOf(path, "type"))),
    fields,
    errorSlot(path),
  );
}

// A number or an object in its place: a learning rate, or a schedule of it.
function numberOrObject(field, alternative, holder, path, ctx, label) {
  const key = field.name;
  const box = el("div", { class: "object-field", "data-field": path });
  const constant = "constant";
  function draw() {
    const value = holder[key];
    const isObject = value && typeof value === "object";
    const mode = selectInput([constant, ...alternative.choices], isObject ? value.type : constant, pathOf(path, "type"), (chosen) => {
      if (chosen === constant) delete holder[key];
      else holder[key] = retyped(alternative.of, isObject ? holder[key] : {}, chosen, ctx);
      draw();
      ctx.changed();
    });
    mode.setAttribute("aria-label", `${field.name} kind`);
    mode.removeAttribute("data-path");
    const parts = [el("span", { class: "field-name", text: (label || field.name).replaceAll("_", " ") }), mode];
    if (isObject) {
      box.replaceChildren(el("div", { class: "field" }, ...parts), el("div", { class: "fields nested" }, fieldEditors(alternative.of, holder[key], path, ctx)), errorSlot(path));
    } else {
      const input = numberInput(field, value, path, (number) => {
        setOrRemove(holder, key, number);
        ctx.changed();
      });
      box.replaceChildren(labelled(field, path, el("span", { class: "pair" }, mode, input), { label }));
    }
  }
  draw();
  return box;
}

// A 422's problems, each beside the input its path names, or the nearest part of the form above it (a layer, the
// optimizer); those the form has no place for are answered in a list. Returns that list's items.
export function placeErrors(root, errors) {
  clearErrors(root);
  const unplaced = [];
  for (const problem of errors) {
    let path = problem.path || "";
    let slot = null;
    while (path && !slot) {
      slot = root.querySelector(`[data-error-for="${CSS.escape(path)}"]`);
      if (!slot) path = parentPath(path);
    }
    if (!slot) {
      unplaced.push(problem);
      continue;
    }
    slot.hidden = false;
    slot.append(el("span", { class: "problem", "data-problem-path": problem.path, text: problem.message }));
    root.querySelectorAll(`[data-path="${CSS.escape(path)}"]`).forEach((input) => input.setAttribute("aria-invalid", "true"));
    const holder = slot.closest("[data-field], .layer, .block");
    if (holder) holder.classList.add("has-error");
  }
  return unplaced;
}

export function clearErrors(root) {
  root.querySelectorAll("[data-error-for]").forEach((slot) => {
    slot.replaceChildren();
    slot.hidden = true;
  });
  root.querySelectorAll("[aria-invalid]").forEach((input) => input.removeAttribute("aria-invalid"));
  root.querySelectorAll(".has-error").forEach((node) => node.classList.remove("has-error"));
}
