// orchestrator ui: the live parts of the pages. Journal text is untrusted: it only ever
// reaches the page through textContent (never innerHTML), and links only to this origin.
"use strict";

// Chains in cool colours, failure classes in warm and dark ones, so that they never clash.
const PALETTE = ["#1f77b4", "#2ca02c", "#17becf", "#6b8e23", "#4c72b0", "#00a087"];
const FAILURE_PALETTE = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#ff7f0e",
  "#bcbd22", "#843c39", "#7b4173", "#393b79", "#8c6d31"];

function colour(name) {
  let h = 0;
  for (const ch of String(name)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return FAILURE_PALETTE[h % FAILURE_PALETTE.length];
}

function pct(x, digits = 2) {
  return typeof x === "number" ? (100 * x).toFixed(digits) + "%" : "n/a";
}

function count(x) {
  if (typeof x !== "number") return "";
  if (x >= 1e9) return (x / 1e9).toFixed(2) + " G";
  if (x >= 1e6) return (x / 1e6).toFixed(2) + " M";
  if (x >= 1e3) return (x / 1e3).toFixed(1) + " k";
  return String(x);
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function link(text, url) {
  const a = el("a", text);
  if (typeof url === "string" && url.startsWith("/") && !url.startsWith("//")) a.href = url;
  return a;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell ?? "";
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// One EventSource per page; `onChange(names)` gets the runs whose journal changed.
function follow(onChange) {
  const live = document.getElementById("live");
  const source = new EventSource("/events");
  source.onopen = () => live.classList.add("on");
  source.onerror = () => live.classList.remove("on");
  source.addEventListener("runs", (event) => onChange(JSON.parse(event.data)));
}

// Fetch JSON and render it; a change while a fetch is in flight triggers one more fetch.
function loader(url, render) {
  let busy = false, again = false;
  async function load() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(url, {headers: {"Accept": "application/json"}});
      if (response.ok) render(await response.json());
    } finally {
      busy = false;
      if (again) { again = false; load(); }
    }
  }
  return load;
}

// ---------------------------------------------------------------- runs list

function runsPage() {
  const tbody = document.querySelector("#runs tbody");
  let last = [];
  const render = (runs) => {
    last = runs;
    document.getElementById("empty").hidden = runs.length > 0;
    fill(tbody, sortedRuns(runs).map((r) => row([
      compareBox(r.name), link(r.name, r.url), when(r.started), r.dataset,
      `${r.generator_model ?? "?"} / ${r.improver_model ?? "?"}`,
      el("span", r.status, "status " + r.status),
      r.planned ? `${r.iterations} / ${r.planned}` : r.iterations,
      pct(r.success_rate, 0), r.best_url ? link(pct(r.best_accuracy), r.best_url) : pct(r.best_accuracy),
      pct(r.best_test_accuracy),
      typeof r.iterations_per_hour === "number" ? r.iterations_per_hour.toFixed(1) : "n/a",
    ])));
  };
  const load = loader("/api/runs", render);
  sortableHeaders(() => render(last));
  load();
  follow(() => load());
}

// ---------------------------------------------------------------- runs list: sort and pick

const runSort = {key: null, descending: false};
const SORT_KEYS = {models: (r) => `${r.generator_model ?? ""} / ${r.improver_model ?? ""}`};

function when(epoch) {
  if (typeof epoch !== "number") return "n/a";
  const d = new Date(epoch * 1000), two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}`;
}

// The runs in the order the clicked header asks for; runs without a value go last either way.
function sortedRuns(runs) {
  if (!runSort.key) return runs;
  const value = SORT_KEYS[runSort.key] ?? ((r) => r[runSort.key]);
  const sign = runSort.descending ? -1 : 1;
  return [...runs].sort((a, b) => {
    const x = value(a), y = value(b);
    if (x === null || x === undefined) return y === null || y === undefined ? 0 : 1;
    if (y === null || y === undefined) return -1;
    return sign * (typeof x === "number" && typeof y === "number" ? x - y
      : String(x).localeCompare(String(y)));
  });
}

// A click on a header sorts by it; a second click reverses the order.
function sortableHeaders(rerender) {
  const headers = document.querySelectorAll("#runs th[data-sort]");
  for (const th of headers) {
    th.classList.add("sortable");
    th.addEventListener("click", () => {
      runSort.descending = runSort.key === th.dataset.sort && !runSort.descending;
      runSort.key = th.dataset.sort;
      for (const other of headers) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", runSort.descending ? "descending" : "ascending");
      rerender();
    });
  }
}

const picked = new Set();

function compareBox(name) {
  const input = document.createElement("input");
  input.type = "checkbox"; input.className = "pick"; input.value = name;
  input.checked = picked.has(name);
  input.setAttribute("aria-label", `compare ${name}`);
  input.addEventListener("change", () => {
    if (input.checked) picked.add(name); else picked.delete(name);
    compareLink();
  });
  return input;
}

// The compare link names the ticked runs in its URL (/compare?run=a&run=b).
function compareLink() {
  const a = document.getElementById("compare");
  const most = Number(document.body.dataset.maxCompare);
  const ok = picked.size >= 2 && picked.size <= most;
  a.hidden = !ok;
  if (ok) a.href = "/compare?" + new URLSearchParams([...picked].map((n) => ["run", n]));
  else a.removeAttribute("href");
  document.getElementById("compare-hint").hidden = ok;
}

// ---------------------------------------------------------------- run view

const hidden = {chains: new Set(), classes: new Set()};

function trajectoryDatasets(data) {
  const sets = [];
  const many = data.trajectory.chains.length > 1;
  data.trajectory.chains.forEach((c, k) => {
    const name = many ? `chain ${c.chain}` : "accuracy";
    const hue = many ? PALETTE[k % PALETTE.length] : PALETTE[0];
    const off = hidden.chains.has(c.chain);
    sets.push({label: `${name}: best so far`, chain: c.chain, data: c.best, type: "line",
      stepped: "before", borderColor: hue, backgroundColor: hue, pointRadius: 0,
      borderWidth: 2, hidden: off, order: 2});
    sets.push({label: `${name}: evaluations`, chain: c.chain, data: c.points, type: "scatter",
      borderColor: hue, backgroundColor: hue + "99", pointRadius: 4, pointHoverRadius: 6,
      hidden: off, order: 1});
    for (const [cls, points] of Object.entries(c.failures)) {
      const y = -0.04 - 0.03 * k;
      sets.push({label: cls, failure: cls, chain: c.chain, type: "scatter",
        data: points.map((p) => ({...p, y})), pointStyle: "crossRot", pointRadius: 6,
        borderWidth: 2, borderColor: colour(cls), backgroundColor: colour(cls),
        hidden: off || hidden.classes.has(cls), order: 0});
    }
  });
  return sets;
}

function legendClick(event, item, legend) {
  const chart = legend.chart;
  const ds = chart.data.datasets[item.datasetIndex];
  if (ds.failure) toggle(hidden.classes, ds.failure); else toggle(hidden.chains, ds.chain);
  for (const d of chart.data.datasets) {
    d.hidden = hidden.chains.has(d.chain) || (d.failure !== undefined && hidden.classes.has(d.failure));
  }
  syncChainBoxes();
  chart.update();
}

function toggle(set, value) {
  if (set.has(value)) set.delete(value); else set.add(value);
}

function trajectoryChart(canvas) {
  return new Chart(canvas, {
    type: "scatter",
    data: {datasets: []},
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      interaction: {mode: "nearest", intersect: true},
      scales: {
        x: {type: "linear", title: {display: true, text: "iteration"}, ticks: {precision: 0},
          afterDataLimits: (scale) => { scale.min -= 0.5; scale.max += 0.5; }},
        y: {title: {display: true, text: "accuracy"}, suggestedMin: -0.1, suggestedMax: 1,
          ticks: {callback: (v) => v >= 0 ? pct(v, 0) : ""}},
      },
      plugins: {
        legend: {position: "bottom", onClick: legendClick, labels: {
          filter: (item, data) => {
            const ds = data.datasets[item.datasetIndex];
            if (!ds.failure) return !ds.label.endsWith(": evaluations");
            return data.datasets.findIndex((d) => d.failure === ds.failure) === item.datasetIndex;
          }}},
        tooltip: {callbacks: {label: (ctx) => {
          const p = ctx.raw, ds = ctx.dataset;
          return ds.failure ? `iteration ${p.x}: ${ds.failure}` : `iteration ${p.x}: ${pct(p.y)}`;
        }}},
      },
      onClick: (event, elements, chart) => {
        if (!elements.length) return;
        const p = chart.data.datasets[elements[0].datasetIndex].data[elements[0].index];
        if (p && typeof p.url === "string" && p.url.startsWith("/runs/")) location.assign(p.url);
      },
      onHover: (event, elements) => {
        event.native.target.style.cursor = elements.length ? "pointer" : "default";
      },
    },
  });
}

function failuresChart(canvas) {
  return new Chart(canvas, {
    type: "bar", data: {labels: [], datasets: []},
    options: {animation: false, responsive: true, maintainAspectRatio: false,
      scales: {x: {stacked: true, title: {display: true, text: "iterations"}},
        y: {stacked: true, title: {display: true, text: "failures"}, ticks: {precision: 0}}},
      plugins: {legend: {position: "bottom"}}},
  });
}

function chainBoxes(chains) {
  const filters = document.querySelector(".chart");
  let box = document.getElementById("chains");
  if (chains.length < 2) return;
  if (!box) {
    box = el("p", null, "chains");
    box.id = "chains";
    filters.after(box);
  }
  const have = new Set([...box.querySelectorAll("input")].map((i) => Number(i.value)));
  for (const c of chains) {
    if (have.has(c)) continue;
    const label = el("label");
    const input = document.createElement("input");
    input.type = "checkbox"; input.value = String(c); input.checked = !hidden.chains.has(c);
    input.addEventListener("change", () => {
      if (input.checked) hidden.chains.delete(c); else hidden.chains.add(c);
      redraw();
    });
    label.append(input, document.createTextNode(` chain ${c}`));
    box.appendChild(label);
  }
}

function syncChainBoxes() {
  for (const input of document.querySelectorAll("#chains input")) {
    input.checked = !hidden.chains.has(Number(input.value));
  }
}

function options(select, values) {
  const keep = select.value;
  const first = select.options[0];
  select.replaceChildren(first, ...values.map((v) => {
    const o = el("option", v); o.value = String(v); return o;
  }));
  select.value = values.map(String).includes(keep) ? keep : "";
}

let state = null, charts = null;

function redraw() {
  if (!state) return;
  charts.trajectory.data.datasets = trajectoryDatasets(state);
  charts.trajectory.update();
  renderRows();
}

function renderRows() {
  const status = document.getElementById("filter-status").value;
  const chain = document.getElementById("filter-chain").value;
  const rows = state.rows.filter((r) => (!status || r.status === status)
    && (!chain || String(r.chain) === chain));
  fill(document.querySelector("#iterations tbody"), rows.map((r) => {
    const tr = row([r.chain, link(r.iteration, r.url), el("span", r.status, "status " + r.status),
      pct(r.accuracy), pct(r.test_accuracy), pct(r.best_accuracy), count(r.params),
      count(r.flops), r.seconds.toFixed(1), r.error]);
    tr.dataset.status = r.status;
    return tr;
  }));
  document.getElementById("shown").textContent = `${rows.length} of ${state.rows.length} shown`;
}

function renderRun(data) {
  state = data;
  const facts = document.getElementById("facts");
  facts.replaceChildren(
    el("span", data.status, "status " + data.status),
    document.createTextNode(` · ${data.iterations} iterations` +
      (data.planned ? ` of ${data.planned}` : "") +
      (data.chains > 1 ? ` (${data.chains} chains)` : "") +
      (data.lost ? ` · ${data.lost} attempts lost to faults (tried again, not counted)` : "") +
      ` · success rate ${pct(data.success_rate, 0)} · best ${pct(data.best_accuracy)}` +
      (data.best_test_accuracy !== null ? ` (test ${pct(data.best_test_accuracy)})` : "") +
      ` · ${typeof data.iterations_per_hour === "number" ? data.iterations_per_hour.toFixed(1) : "n/a"} iterations/hour` +
      ` · selected on ${data.select_on}`));
  bestLinks(data);
  chainBoxes(data.trajectory.chains.map((c) => c.chain));
  options(document.getElementById("filter-status"), [...new Set(data.rows.map((r) => r.status))].sort());
  options(document.getElementById("filter-chain"), [...new Set(data.rows.map((r) => r.chain))].sort((a, b) => a - b));
  redraw();
  charts.failures.data.labels = data.failures.labels;
  charts.failures.data.datasets = Object.entries(data.failures.classes).map(([cls, counts]) => (
    {label: cls, data: counts, backgroundColor: colour(cls)}));
  charts.failures.update();
  fill(document.querySelector("#windows tbody"), data.windows.map((w) => row([
    `${w.start}-${w.end}`, w.n,
    `${pct(w.valid_rate, 0)} ${w.valid_ci ? `[${pct(w.valid_ci[0], 0)}, ${pct(w.valid_ci[1], 0)}]` : ""}`,
    `${pct(w.mean_acc)} ${w.acc_ci ? `[${pct(w.acc_ci[0])}, ${pct(w.acc_ci[1])}]` : ""}`,
    pct(w.best_acc), w.above_threshold === null ? "n/a" : `${w.above_threshold} of ${w.valid}`,
    w.novel ?? "n/a"])));
  fill(document.getElementById("warnings"), data.warnings.map((w) => el("li", w)));
  document.body.dataset.iterations = String(data.iterations);
}

// The best iteration's page and the download of best.py, once the run has them.
function bestLinks(data) {
  for (const [id, url] of [["best-link", data.best_url], ["best-code", data.best_code_url]]) {
    const a = document.getElementById(id);
    a.hidden = !url;
    if (url) a.href = url; else a.removeAttribute("href");
  }
}

function runPage() {
  const name = document.body.dataset.run;
  charts = {trajectory: trajectoryChart(document.getElementById("trajectory")),
    failures: failuresChart(document.getElementById("failures"))};
  for (const id of ["filter-status", "filter-chain"]) {
    document.getElementById(id).addEventListener("change", renderRows);
  }
  const load = loader(document.body.dataset.api, renderRun);
  load();
  follow((names) => { if (names.includes(name)) load(); });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "runs") runsPage();
  else if (page === "run") runPage();
});
