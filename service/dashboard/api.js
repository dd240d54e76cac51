// Talking to the TrainServe API from the page: JSON calls and the job event stream, both carrying the API key
// when one is set (the stream is read with fetch, since EventSource cannot send an Authorization header), and an
// experiment's event stream, with polling when that stream cannot be had.

const KEY_STORAGE = "trainserve.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || "http_error";
    this.errors = error.errors || [];
  }
}

function headers(extra = {}) {
  const result = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) document.dispatchEvent(new CustomEvent("trainserve:unauthorized"));
    throw new ApiError(response.status, data);
  }
  return data;
}

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

// Follow GET /jobs/{id}/events: onEpoch(row) per finished epoch, onStatus(job) per status change. Reconnects with
// Last-Event-ID if the connection drops before the job ends. Returns a function that stops following.
export function followJob(jobId, { onEpoch, onStatus, onError }) {
  const controller = new AbortController();
  let lastId = null;
  let finished = false;

  function dispatch(block) {
    const event = { event: "message", data: "" };
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") event.data += value;
      else event[field] = value;
    }
    if (event.id !== undefined) lastId = event.id;
    if (!event.data) return;
    const data = JSON.parse(event.data);
    if (event.event === "epoch") onEpoch(data);
    if (event.event === "status") {
      if (FINISHED.has(data.status)) finished = true;
      onStatus(data);
    }
  }

  async function run() {
    while (!finished && !controller.signal.aborted) {
      try {
        const extra = { Accept: "text/event-stream" };
        if (lastId) extra["Last-Event-ID"] = lastId;
        const response = await fetch(`/jobs/${jobId}/events`, { headers: headers(extra), signal: controller.signal });
        if (!response.ok) {
          const body = await response.json().catch(() => null);
          if (response.status === 401) document.dispatchEvent(new CustomEvent("trainserve:unauthorized"));
          throw new ApiError(response.status, body);
        }
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            dispatch(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && error.status < 500) {
          if (onError) onError(error);
          return;
        }
      }
      if (!finished) await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  run();
  return () => controller.abort();
}

// Follow an experiment: onTrial(trial) whenever one of its trials changes, onExperiment(summary) whenever the
// experiment's status, counts or best trial change, until it ends. Its event stream is read with EventSource, which
// reconnects by itself but cannot send an API key: with a key set, or once the stream errors (dropped, refused,
// too many streams), the experiment is polled instead. onMode("events" | "polling") says which. Returns a function
// that stops following.
export function followExperiment(experimentId, { onTrial, onExperiment, onMode = () => {}, onError, pollMs = 1000 }) {
  let source = null;
  let timer = null;
  let stopped = false;

  function stop() {
    stopped = true;
    if (source) source.close();
    clearTimeout(timer);
  }
  function summary(experiment) {
    onExperiment(experiment);
    if (experiment.status !== "running") stop();
  }
  async function poll() {
    try {
      const experiment = await api(`/experiments/${experimentId}`);
      if (stopped) return;
      (experiment.trials || []).forEach(onTrial);
      summary(experiment);
    } catch (error) {
      if (stopped) return;
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
        stop();
        if (onError) onError(error);
        return;
      }
    }
    if (!stopped) timer = setTimeout(poll, pollMs);
  }
  function startPolling() {
    if (source) source.close();
    source = null;
    onMode("polling");
    poll();
  }

  if (apiKey() || typeof EventSource === "undefined") {
    startPolling();
  } else {
    onMode("events");
    source = new EventSource(`/experiments/${experimentId}/events`);
    source.addEventListener("trial", (event) => onTrial(JSON.parse(event.data)));
    source.addEventListener("experiment", (event) => summary(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      if (!stopped) startPolling();
    });
  }
  return stop;
}
