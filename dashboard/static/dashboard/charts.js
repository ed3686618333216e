"use strict";
// Draws every <canvas data-chart="ID"> from the JSON the server put in <script id="ID"
// type="application/json"> (Django's json_script): data, never code, so the Content-Security-Policy
// needs no inline script. Chart.js is the vendored release file (dashboard/vendor-js.sh).
(function () {
  const PALETTE = ["#4f46e5", "#0ea5e9", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b", "#ec4899"];

  function colour(index) {
    return PALETTE[index % PALETTE.length];
  }

  function stackedCost(spec) {
    const money = (value) => `${Number(value).toFixed(4)} ${spec.currency}`;
    return {
      type: "bar",
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map((set, i) => ({
          label: set.label,
          data: set.data,
          backgroundColor: colour(i),
          stack: "cost",
        })),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true },
          y: { stacked: true, beginAtZero: true, title: { display: true, text: spec.currency } },
        },
        plugins: {
          tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${money(item.raw)}` } },
        },
      },
    };
  }

  function latency(spec) {
    return {
      type: "line",
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map((set, i) => ({
          label: set.label,
          data: set.data,
          borderColor: colour(i),
          backgroundColor: colour(i),
          spanGaps: true,
        })),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, title: { display: true, text: "ms" } } },
      },
    };
  }

  const BUILDERS = { "stacked-cost": stackedCost, latency: latency };

  for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
    const source = document.getElementById(canvas.dataset.chart);
    const build = BUILDERS[canvas.dataset.kind];
    if (!source || !build || typeof Chart === "undefined") {
      continue;
    }
    new Chart(canvas, build(JSON.parse(source.textContent)));
  }
})();
