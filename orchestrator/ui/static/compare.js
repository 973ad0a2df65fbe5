// orchestrator ui: the comparison page's chart (uses ui.js's helpers). Run names and journal
// text reach the page through textContent only.
"use strict";

const RUN_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
  "#e377c2", "#17becf"];

// A run's chains: the one holding its best is its line; its other chains are off until asked.
function compareDatasets(data, shown) {
  return data.runs.flatMap((run, k) => run.chains.map((c) => ({
    label: run.chains.length > 1 ? `${run.name} · chain ${c.chain}` : run.name,
    run: run.name, chain: c.chain, key: `${k}:${c.chain}`, data: c.best, type: "line",
    stepped: "before", borderColor: RUN_PALETTE[k % RUN_PALETTE.length],
    backgroundColor: RUN_PALETTE[k % RUN_PALETTE.length], pointRadius: 0, pointHitRadius: 6,
    borderWidth: 2, borderDash: c.chain === run.best_chain ? [] : [6, 4],
    hidden: !shown.has(`${k}:${c.chain}`),
  })));
}

function defaultShown(data) {
  return new Set(data.runs.map((run, k) => {
    const best = run.chains.some((c) => c.chain === run.best_chain) ? run.best_chain
      : run.chains[0]?.chain;
    return `${k}:${best}`;
  }));
}

function compareChart(canvas, onLegend) {
  return new Chart(canvas, {
    type: "line", data: {datasets: []},
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      interaction: {mode: "nearest", intersect: false},
      scales: {
        x: {type: "linear", title: {display: true, text: "iteration"}, ticks: {precision: 0}},
        y: {title: {display: true, text: "best accuracy so far"},
          ticks: {callback: (v) => pct(v, 0)}},
      },
      plugins: {
        legend: {position: "bottom", onClick: (event, item) => onLegend(item.datasetIndex),
          labels: {usePointStyle: true, pointStyle: "line"}},
        tooltip: {callbacks: {label: (ctx) =>
          `${ctx.dataset.run}, chain ${ctx.dataset.chain}, iteration ${ctx.raw.x}: ${pct(ctx.raw.y)}`}},
      },
    },
  });
}

function compareBoxes(data, shown, redraw) {
  const box = document.getElementById("compare-chains");
  box.replaceChildren(...data.runs.filter((run) => run.chains.length > 1).map((run) => {
    const k = data.runs.indexOf(run);
    const line = el("p");
    line.append(link(run.name, run.url), document.createTextNode(": "));
    for (const c of run.chains) {
      const label = el("label");
      const input = document.createElement("input");
      input.type = "checkbox"; input.value = `${k}:${c.chain}`;
      input.checked = shown.has(input.value);
      input.addEventListener("change", () => {
        if (input.checked) shown.add(input.value); else shown.delete(input.value);
        redraw();
      });
      label.append(input, document.createTextNode(` chain ${c.chain}`));
      line.appendChild(label);
    }
    return line;
  }));
}

function comparePage() {
  let chart = null, data = null, shown = null;
  function redraw() {
    chart.data.datasets = compareDatasets(data, shown);
    chart.update();
    for (const input of document.querySelectorAll("#compare-chains input")) {
      input.checked = shown.has(input.value);
    }
  }
  chart = compareChart(document.getElementById("compare-chart"), (index) => {
    toggle(shown, chart.data.datasets[index].key);
    redraw();
  });
  loader(() => document.body.dataset.api, (loaded) => {
    data = loaded;
    shown = defaultShown(data);
    compareBoxes(data, shown, redraw);
    redraw();
    document.body.dataset.ready = "1";
  })();
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "compare") comparePage();
});
