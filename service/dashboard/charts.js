// Training curves with Chart.js (loaded as a classic script, window.Chart). Every chart a page draws is kept in
// window.trainserve.charts under a name, and its canvas carries data-points (points drawn so far).

const PALETTE = ["#2f6fde", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0c8599", "#5c940d", "#862e9c", "#d9480f", "#364fc7"];

export function colour(index) {
  return PALETTE[index % PALETTE.length];
}

export function registry() {
  window.trainserve = window.trainserve || {};
  window.trainserve.charts = window.trainserve.charts || {};
  return window.trainserve.charts;
}

export function lineChart(name, canvas, { title, yTitle }) {
  const chart = new window.Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      interaction: { mode: "nearest", intersect: false },
      plugins: {
        title: { display: Boolean(title), text: title, font: { size: 14, weight: "600" } },
        legend: { position: "bottom", labels: { usePointStyle: true, boxWidth: 8 } },
        tooltip: {
          callbacks: { title: (items) => (items.length ? `epoch ${items[0].parsed.x}` : "") },
        },
      },
      scales: {
        x: { type: "linear", title: { display: true, text: "epoch" }, ticks: { precision: 0 }, min: 1 },
        y: { title: { display: Boolean(yTitle), text: yTitle } },
      },
    },
  });
  registry()[name] = chart;
  return chart;
}

export function series(chart, key, { label, colourIndex, dashed = false }) {
  let dataset = chart.data.datasets.find((d) => d.key === key);
  if (!dataset) {
    dataset = {
      key,
      label,
      data: [],
      borderColor: colour(colourIndex),
      backgroundColor: colour(colourIndex),
      borderDash: dashed ? [6, 4] : [],
      borderWidth: 2,
      pointRadius: 2.5,
      tension: 0.15,
    };
    chart.data.datasets.push(dataset);
  }
  return dataset;
}

export function addPoint(chart, dataset, x, y) {
  const existing = dataset.data.findIndex((p) => p.x === x);
  if (existing >= 0) dataset.data[existing] = { x, y };
  else dataset.data.push({ x, y });
  dataset.data.sort((a, b) => a.x - b.x);
}

export function points(chart) {
  return chart.data.datasets.reduce((sum, d) => sum + d.data.length, 0);
}

export function redraw(chart) {
  chart.update("none");
  chart.canvas.dataset.points = String(points(chart));
}

export function clear(chart) {
  for (const dataset of chart.data.datasets) dataset.data = [];
  redraw(chart);
}

export function destroyAll() {
  const charts = registry();
  for (const name of Object.keys(charts)) {
    charts[name].destroy();
    delete charts[name];
  }
}
