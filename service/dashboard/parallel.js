// Parallel coordinates, drawn as SVG by this file: one vertical axis per dimension, one line per item through its
// value on every axis. An axis is "category" (its values evenly spaced, the first at the top), "linear" or "log"
// (numbers from low at the bottom to high at the top, or the other way round with `reversed`). Chart.js has no such
// chart, and SVG keeps every line an element a test or a tooltip can find.

import { number } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const TOP = 46;
const BOTTOM = 22;
const MIN_SIDE = 40;
const MAX_SIDE = 320;
const CHAR = 6.4; // an 11px label's average character, wide enough for digits and letters
const TITLE_CHAR = 7.4; // the same for a 12px bold title
const LABEL = 48; // "sgd (learning_rate 0.01, momentum 0.9, nesterov)" whole
const TITLE = 40;
const MIN_SPACING = 150;
const LINE = 13; // pixels between two tick labels, at the least
const TICKS = 5;

function node(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null && value !== false) element.setAttribute(key, String(value));
  }
  for (const child of children) element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return element;
}

// Key order does not make two values different: {"type": "sgd", "momentum": 0.9} is {"momentum": 0.9, "type": "sgd"}.
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonical(value[key])}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

function niceStep(span) {
  const raw = span / TICKS;
  const power = 10 ** Math.floor(Math.log10(raw));
  const factor = [1, 2, 2.5, 5, 10].find((f) => f * power >= raw);
  return factor * power;
}

// fraction(value): 0 at the bottom of the axis, 1 at the top, null for a value the axis cannot place.
function scale(axis, values) {
  if (axis.kind === "category") {
    const keys = axis.categories.map((c) => canonical(c.value));
    const last = Math.max(1, keys.length - 1);
    const fraction = (value) => {
      const index = keys.indexOf(canonical(value));
      if (index < 0) return null;
      return keys.length === 1 ? 0.5 : 1 - index / last;
    };
    return { fraction, ticks: axis.categories.map((c) => ({ value: c.value, label: c.label })) };
  }
  const log = axis.kind === "log";
  const numbers = values.filter((v) => typeof v === "number" && Number.isFinite(v) && (!log || v > 0));
  let low = axis.low ?? (numbers.length ? Math.min(...numbers) : 0);
  let high = axis.high ?? (numbers.length ? Math.max(...numbers) : 1);
  if (log) [low, high] = [Math.log10(low), Math.log10(high)];
  const flat = high === low;
  const fraction = (value) => {
    if (typeof value !== "number" || !Number.isFinite(value) || (log && value <= 0)) return null;
    const position = log ? Math.log10(value) : value;
    const share = flat ? 0.5 : Math.min(1, Math.max(0, (position - low) / (high - low)));
    return axis.reversed ? 1 - share : share;
  };
  let ticks;
  if (flat) {
    ticks = [log ? 10 ** low : low];
  } else if (log && high - low >= 1) {
    ticks = [];
    for (let power = Math.ceil(low); power <= Math.floor(high); power += Math.max(1, Math.ceil((high - low) / 8))) ticks.push(10 ** power);
  } else if (log) {
    ticks = [10 ** low, 10 ** high];
  } else {
    const step = niceStep(high - low);
    ticks = [];
    for (let tick = Math.ceil(low / step) * step; tick <= high + step * 1e-9; tick += step) ticks.push(Number(tick.toPrecision(12)));
  }
  return { fraction, ticks: ticks.map((value) => ({ value, label: number(value) })) };
}

function clip(text, size) {
  return text.length > size ? `${text.slice(0, size - 1)}…` : text;
}

// axes: [{key, label, kind, categories?: [{value, label}], low?, high?, reversed?}]
// lines: [{id, values: {axisKey: value}, colour, width?, dashed?, title?, attrs?}]
// Draws into the element `into` (replacing what it held) and returns what it drew: each axis's ticks and each
// line's points, in pixels of the SVG's own coordinates.
export function parallelCoordinates(into, { axes, lines, height = 340 }) {
  const scales = axes.map((axis) => scale(axis, lines.map((line) => line.values[axis.key])));
  // The outer axes' tick labels sit outside them, their titles centred on them: leave room for the longest.
  const room = (index) => {
    const ticks = 14 + CHAR * Math.max(0, ...scales[index].ticks.map((t) => clip(t.label, LABEL).length));
    const title = (TITLE_CHAR * Math.min(axes[index].label.length, TITLE)) / 2 + 8;
    return Math.min(MAX_SIDE, Math.max(MIN_SIDE, ticks, title));
  };
  const left = room(0);
  const right = room(axes.length - 1);
  const width = Math.max(into.clientWidth || 900, left + right + (axes.length - 1) * MIN_SPACING);
  const spacing = axes.length > 1 ? (width - left - right) / (axes.length - 1) : 0;
  const x = (index) => (axes.length > 1 ? left + index * spacing : width / 2);
  const y = (fraction) => TOP + (1 - fraction) * (height - TOP - BOTTOM);
  const root = node("svg", {
    class: "parallel",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": `parallel coordinates: ${axes.map((a) => a.label).join(", ")}`,
  });

  const axisGroups = [];
  const drawnAxes = axes.map((axis, index) => {
    const group = node("g", { class: "axis", "data-axis": axis.key, "data-kind": axis.kind });
    axisGroups.push(group);
    group.append(node("line", { x1: x(index), x2: x(index), y1: y(1), y2: y(0) }));
    const title = node("text", { class: "axis-title", x: x(index), y: TOP - 26, "text-anchor": "middle" }, clip(axis.label, axes.length > 1 ? Math.min(TITLE, Math.max(12, Math.floor(spacing / TITLE_CHAR))) : TITLE));
    title.append(node("title", {}, axis.label));
    group.append(title);
    if (axis.note) group.append(node("text", { class: "axis-note", x: x(index), y: TOP - 12, "text-anchor": "middle" }, axis.note));
    // A long list of choices is labelled every few ticks, so that labels never overlap.
    const every = Math.ceil(scales[index].ticks.length / Math.max(1, Math.floor((height - TOP - BOTTOM) / LINE)));
    const ticks = scales[index].ticks.map((tick, position) => {
      const at = y(scales[index].fraction(tick.value) ?? 0.5);
      const anchor = index === axes.length - 1 ? "start" : "end";
      const dx = anchor === "start" ? 7 : -7;
      group.append(node("line", { class: "tick", x1: x(index) - 3, x2: x(index) + 3, y1: at, y2: at }));
      const fits = index === 0 || index === axes.length - 1 ? LABEL : Math.min(LABEL, Math.floor((spacing - 24) / CHAR));
      if (position % every === 0) {
        const label = node("text", { class: "tick-label", x: x(index) + dx, y: at + 4, "text-anchor": anchor }, clip(tick.label, fits));
        label.append(node("title", {}, tick.label));
        group.append(label);
      }
      return { label: tick.label, y: at };
    });
    return { key: axis.key, label: axis.label, kind: axis.kind, ticks };
  });

  const linesGroup = node("g", { class: "lines" });
  const drawnLines = lines.map((line) => {
    const points = axes.map((axis, index) => {
      const fraction = scales[index].fraction(line.values[axis.key]);
      return fraction === null ? null : [Number(x(index).toFixed(2)), Number(y(fraction).toFixed(2))];
    });
    // A value an axis cannot place breaks the line there rather than drawing it somewhere false.
    let path = "";
    points.forEach((point, index) => {
      if (point) path += `${index && points[index - 1] ? "L" : "M"}${point[0]},${point[1]}`;
    });
    const element = node("path", {
      class: "line",
      d: path,
      stroke: line.colour,
      "stroke-width": line.width || 2,
      "stroke-dasharray": line.dashed ? "6 4" : null,
      ...(line.attrs || {}),
    });
    if (line.title) element.append(node("title", {}, line.title));
    linesGroup.append(element);
    return { id: line.id, points };
  });
  // The lines first, the axes over them: tick labels stay readable however many lines cross them.
  root.append(linesGroup, ...axisGroups);
  into.replaceChildren(root);
  return { width, height, axes: drawnAxes, lines: drawnLines };
}
