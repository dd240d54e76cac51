// Jobs, newest first, refreshed every second and a half: status, progress, last metrics. Tick jobs to compare them.

import { api } from "../api.js";
import { badge, el, errorBox, fmt, lastRow, progress, when } from "../ui.js";

const REFRESH_MS = 1500;
const ACTIVE = new Set(["queued", "running"]);

export async function render(view) {
  const selected = new Set();
  const compareButton = el("button", { class: "primary", disabled: true, "data-action": "compare", text: "Compare selected" });
  compareButton.addEventListener("click", () => {
    location.hash = `#/compare?jobs=${[...selected].join(",")}`;
  });
  const count = el("span", { class: "muted small" });
  const body = el("tbody");
  const errors = el("div");
  view.append(
    el("h1", {}, "Jobs"),
    el(
      "div",
      { class: "toolbar" },
      el("a", { class: "button primary", href: "#/new", text: "New training job" }),
      compareButton,
      count,
    ),
    errors,
    el(
      "table",
      { class: "jobs" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          el("th", { text: "" }),
          el("th", { text: "Name" }),
          el("th", { text: "Status" }),
          el("th", { text: "Progress" }),
          el("th", { class: "num", text: "Loss" }),
          el("th", { class: "num", text: "Accuracy" }),
          el("th", { class: "num", text: "Val. accuracy" }),
          el("th", { text: "Created" }),
          el("th", { text: "Model" }),
          el("th", { text: "" }),
        ),
      ),
      body,
    ),
  );

  function row(job) {
    const last = lastRow(job.history);
    const box = el("input", { type: "checkbox", "aria-label": `compare ${job.name || job.job_id}` });
    box.checked = selected.has(job.job_id);
    box.addEventListener("change", () => {
      if (box.checked) selected.add(job.job_id);
      else selected.delete(job.job_id);
      compareButton.disabled = selected.size < 1;
      tr.classList.toggle("selected", box.checked);
    });
    const cancel = ACTIVE.has(job.status)
      ? el("button", {
          class: "small",
          text: "Cancel",
          onclick: async () => {
            try {
              await api(`/jobs/${job.job_id}/cancel`, { method: "POST" });
            } catch (error) {
              errors.replaceChildren(errorBox(error));
            }
            refresh();
          },
        })
      : null;
    const tr = el(
      "tr",
      { "data-job-id": job.job_id, class: box.checked ? "selected" : "" },
      el("td", {}, box),
      el("td", {}, el("a", { href: `#/jobs/${job.job_id}`, text: job.name || job.job_id.slice(0, 8) })),
      el("td", {}, badge(job.status)),
      el("td", {}, progress(job)),
      el("td", { class: "num", text: fmt(last.loss) }),
      el("td", { class: "num", text: fmt(last.accuracy) }),
      el("td", { class: "num", text: fmt(last.val_accuracy) }),
      el("td", { class: "small muted", text: when(job.created_at) }),
      el("td", {}, job.model_id ? el("a", { href: `#/models/${job.model_id}`, text: job.model_id.slice(0, 8) }) : "–"),
      el("td", {}, cancel),
    );
    return tr;
  }

  let timer = null;
  let stopped = false;
  async function refresh() {
    clearTimeout(timer);
    try {
      const list = await api("/jobs?limit=100&history=last");
      if (stopped) return;
      errors.replaceChildren();
      body.replaceChildren(...list.data.map(row));
      if (!list.data.length) {
        body.append(el("tr", {}, el("td", { colspan: 10, class: "empty" }, "No jobs yet. ", el("a", { href: "#/new", text: "Start one from the chapter's examples." }))));
      }
      count.textContent = `${list.count} job${list.count === 1 ? "" : "s"}`;
    } catch (error) {
      if (!stopped) errors.replaceChildren(errorBox(error));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
