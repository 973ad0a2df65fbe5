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

// The live connection: one per browser, in a SharedWorker (live.js) that every tab shares.
// `onChange(names)` gets the runs whose journal changed; `onOpen()` runs when the stream (re)opens,
// since a change while it was down is not told.
function follow(onChange, onOpen) {
  const live = document.getElementById("live");
  const show = (on) => {
    live.classList.toggle("on", on);
    if (on && onOpen) onOpen();
  };
  if (typeof SharedWorker === "undefined") return followAlone(onChange, show);
  const worker = new SharedWorker("/static/live.js", {name: "orchestrator-ui-live"});
  worker.port.onmessage = ({data}) => {
    if ("open" in data) show(data.open);
    if (data.runs) onChange(data.runs);
  };
  addEventListener("pagehide", () => worker.port.postMessage("bye"));
  addEventListener("pageshow", (event) => { if (event.persisted) worker.port.postMessage("hello"); });
}

// Where SharedWorker is missing (Chrome on Android): a stream of this page's own.
function followAlone(onChange, show) {
  const source = new EventSource("/events");
  source.onopen = () => show(true);
  source.onerror = () => show(false);
  source.addEventListener("runs", (event) => onChange(JSON.parse(event.data)));
}

// Fetch JSON from `url()` and render it; a change while a fetch is in flight triggers one more.
function loader(url, render) {
  let busy = false, again = false;
  async function load() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(url(), {headers: {"Accept": "application/json"}});
      if (response.ok) await render(await response.json());
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
  const load = loader(() => "/api/runs", render);
  sortableHeaders(() => render(last));
  load();
  follow(() => load(), load);
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

const PAGE_ROWS = 100;  // iterations table rows per page
const LANE = 0.08;  // the height of each failure class's lane, below zero
const hidden = {chains: new Set(), classes: new Set()};
// The journal's records as table rows, in file order (`index`) and in (iteration, chain) order;
// `total` of them are here, so the next fetch asks only for the records after them.
const run = {rows: [], sorted: [], total: 0, chains: [], lanes: [], data: null};
// What the reader picked, kept in the URL: going back to the page keeps it.
const view = {status: "", chain: "", window: "", page: 1};
let charts = null;

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function readView() {
  const q = new URLSearchParams(location.search);
  view.status = q.get("status") ?? "";
  view.chain = q.get("chain") ?? "";
  view.window = /^[1-9][0-9]{0,5}$/.test(q.get("window") ?? "") ? q.get("window") : "";
  view.page = Math.max(1, Number.parseInt(q.get("page") ?? "1", 10) || 1);
}

function writeView() {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(view)) {
    if (value !== "" && !(key === "page" && value === 1)) q.set(key, String(value));
  }
  const query = q.toString();
  history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
}

function apiUrl() {
  const q = new URLSearchParams({since: String(run.total)});
  if (view.window) q.set("window", view.window);
  return `${document.body.dataset.api}?${q}`;
}

function byIteration(a, b) {
  return a.iteration - b.iteration || a.chain - b.chain || a.index - b.index;
}

// Add the records the server sent (all of them again when it says the journal was rewritten).
function take(data) {
  const fresh = data.rows.map((values, k) => {
    const r = {index: data.since + k};
    data.columns.forEach((column, i) => { r[column] = values[i]; });
    return r;
  });
  run.rows = data.since === 0 ? fresh : run.rows.concat(fresh);
  run.sorted = sortedAfter(data.since === 0 ? [] : run.sorted, fresh);
  run.total = data.total;
  run.data = data;
  run.chains = trajectory(run.sorted);
  run.lanes = [...new Set(run.chains.flatMap((c) => Object.keys(c.failures)))].sort();
}

// `sorted` with `fresh` added: appended when they come after it (a journal grows so), else
// everything sorted again.
function sortedAfter(sorted, fresh) {
  fresh.sort(byIteration);
  const last = sorted[sorted.length - 1];
  if (!fresh.length || !last || byIteration(last, fresh[0]) <= 0) return sorted.concat(fresh);
  return sorted.concat(fresh).sort(byIteration);
}

// Give `chart` these datasets: in place when they are the same series as before (Chart.js then
// keeps its elements), else anew.
function setDatasets(chart, sets) {
  const key = (d) => `${d.label}|${d.chain}`;
  const old = chart.data.datasets;
  if (old.length === sets.length && old.every((d, i) => key(d) === key(sets[i]))) {
    old.forEach((d, i) => { d.data = sets[i].data; d.hidden = sets[i].hidden; });
  } else {
    chart.data.datasets = sets;
  }
  chart.update();
}

// The Figure-2 plot per chain: every evaluation, the best so far (the points where it rose,
// and the last iteration: a step line), failures by class; attempts lost to faults are no
// designs and are left out.
function trajectory(sorted) {
  const chains = new Map();
  let last = 0;
  for (const r of sorted) {
    last = Math.max(last, r.iteration);
    if (r.lost) continue;
    if (!chains.has(r.chain)) chains.set(r.chain, {chain: r.chain, points: [], best: [], failures: {}});
    const c = chains.get(r.chain);
    if (typeof r.accuracy === "number") {
      c.points.push({x: r.iteration, y: r.accuracy, url: r.url});
      if (!c.best.length || r.accuracy > c.best[c.best.length - 1].y) c.best.push({x: r.iteration, y: r.accuracy});
    } else if (r.status !== "ok") {
      (c.failures[r.status] ??= []).push({x: r.iteration, url: r.url});
    }
  }
  for (const c of chains.values()) {
    if (c.best.length) c.best.push({x: last, y: c.best[c.best.length - 1].y});
  }
  return [...chains.values()].sort((a, b) => a.chain - b.chain);
}

function laneY(k) {
  return -LANE * (k + 1);
}

function laneName(y) {
  return run.lanes[Math.round(-y / LANE) - 1] ?? "";
}

function trajectoryDatasets() {
  const sets = [];
  const many = run.chains.length > 1;
  run.chains.forEach((c, k) => {
    const name = many ? `chain ${c.chain}` : "accuracy";
    const hue = many ? PALETTE[k % PALETTE.length] : PALETTE[0];
    const off = hidden.chains.has(c.chain);
    sets.push({label: `${name}: best so far`, chain: c.chain, data: c.best, type: "line",
      stepped: "after", borderColor: hue, backgroundColor: hue, pointRadius: 0,
      borderWidth: 2, hidden: off, order: 2});
    sets.push({label: `${name}: evaluations`, chain: c.chain, data: c.points, type: "line",
      showLine: false, borderColor: hue, backgroundColor: hue + "99", pointRadius: 4,
      pointHoverRadius: 6, hidden: off, order: 1});
    for (const [cls, points] of Object.entries(c.failures)) {
      const y = laneY(run.lanes.indexOf(cls));
      sets.push({label: cls, failure: cls, chain: c.chain, type: "line", showLine: false,
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

function tooltipLabel(ctx) {
  const p = ctx.raw, ds = ctx.dataset;
  return `chain ${ds.chain}, iteration ${p.x}: ${ds.failure ?? pct(p.y)}`;
}

// Below zero, one lane per failure class, named on the axis; above, the accuracy.
function laneTicks(scale) {
  const lanes = run.lanes.map((_, k) => ({value: laneY(k)}));
  scale.ticks = [...lanes.reverse(), ...scale.ticks.filter((t) => t.value >= 0)];
}

// Points are given as {x, y} (parsing off) on a linear x axis, so that Chart.js can decimate
// thousands of them to what the canvas can show.
function trajectoryChart(canvas) {
  return new Chart(canvas, {
    type: "line",
    data: {datasets: []},
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      interaction: {mode: "nearest", intersect: true},
      scales: {
        x: {type: "linear", min: 0, title: {display: true, text: "iteration"},
          ticks: {precision: 0}},
        y: {type: "linear", max: 1, title: {display: true, text: "accuracy"},
          afterBuildTicks: laneTicks,
          ticks: {autoSkip: false, callback: (v) => v >= 0 ? pct(v, 0) : laneName(v)}},
      },
      plugins: {
        decimation: {enabled: true, algorithm: "lttb", threshold: 1000},
        legend: {position: "bottom", onClick: legendClick, labels: {
          filter: (item, data) => {
            const ds = data.datasets[item.datasetIndex];
            if (!ds.failure) return !ds.label.endsWith(": evaluations");
            return data.datasets.findIndex((d) => d.failure === ds.failure) === item.datasetIndex;
          }}},
        tooltip: {callbacks: {label: tooltipLabel}},
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

function options(select, values, wanted) {
  const first = select.options[0];
  select.replaceChildren(first, ...values.map((v) => {
    const o = el("option", v); o.value = String(v); return o;
  }));
  select.value = values.map(String).includes(wanted) ? wanted : "";
}

// The trajectory's x axis ends at the iterations planned per chain (or the last one run).
function redraw() {
  if (!run.data) return;
  drawTrajectory();
  renderRows();
}

function drawTrajectory() {
  const chart = charts.trajectory;
  const last = run.sorted.length ? run.sorted[run.sorted.length - 1].iteration : 0;
  const end = Math.max(run.data.per_chain ?? 0, last);
  chart.options.scales.x.max = end > 0 ? end : undefined;
  chart.options.scales.y.min = laneY(run.lanes.length) + LANE / 2;
  setDatasets(chart, trajectoryDatasets());
}

function shownRows() {
  const status = document.getElementById("filter-status").value;
  const chain = document.getElementById("filter-chain").value;
  return run.sorted.filter((r) => (!status || r.status === status)
    && (!chain || String(r.chain) === chain));
}

function tableRow(r) {
  const tr = row([r.chain, r.url ? link(r.iteration, r.url) : String(r.iteration),
    el("span", r.status, "status " + r.status), pct(r.accuracy), pct(r.test_accuracy),
    pct(r.best_accuracy), count(r.params), count(r.flops), r.seconds.toFixed(1), r.error]);
  tr.dataset.status = r.status;
  return tr;
}

// One page of the table: a journal of 10,000 records is not 10,000 rows in the page.
function renderRows() {
  const rows = shownRows();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
  const page = Math.min(view.page, pages);
  const start = (page - 1) * PAGE_ROWS;
  const shown = rows.slice(start, start + PAGE_ROWS);
  patchRows(document.querySelector("#iterations tbody"), shown, tableRow);
  document.getElementById("shown").textContent = (rows.length ? `${start + 1}-${start + shown.length} of ` : "0 of ")
    + `${rows.length} shown` + (rows.length < run.sorted.length ? ` (${run.sorted.length} in all)` : "");
  document.getElementById("page-prev").disabled = page <= 1;
  document.getElementById("page-next").disabled = page >= pages;
}

function turnPage(step) {
  const pages = Math.max(1, Math.ceil(shownRows().length / PAGE_ROWS));
  view.page = Math.min(Math.max(1, view.page + step), pages);
  writeView();
  renderRows();
}

function renderFacts(data) {
  const facts = document.getElementById("facts");
  facts.replaceChildren(
    el("span", data.status, "status " + data.status),
    document.createTextNode(` · ${plural(data.iterations, "iteration")}` +
      (data.planned ? ` of ${data.planned}` : "") +
      (data.chains > 1 ? ` (${data.chains} chains)` : "") +
      (data.lost ? ` · ${plural(data.lost, "attempt")} lost to faults (tried again, not counted)` : "") +
      ` · success rate ${pct(data.success_rate, 0)} · best ${pct(data.best_accuracy)}` +
      (data.best_test_accuracy !== null ? ` (test ${pct(data.best_test_accuracy)})` : "") +
      ` · ${typeof data.iterations_per_hour === "number" ? data.iterations_per_hour.toFixed(1) : "n/a"} iterations/hour` +
      ` · selected on ${data.select_on}`));
  bestLinks(data);
}

let shownWindows = "";

function renderWindows(data) {
  const input = document.getElementById("window");
  if (document.activeElement !== input) input.value = String(data.window);
  const now = JSON.stringify([data.windows, data.failures]);
  if (now === shownWindows) return;  // a new iteration changes the last window only, if any
  shownWindows = now;
  charts.failures.data.labels = data.failures.labels;
  setDatasets(charts.failures, Object.entries(data.failures.classes).map(([cls, counts]) => (
    {label: cls, data: counts, backgroundColor: colour(cls)})));
  patchRows(document.querySelector("#windows tbody"), data.windows, windowRow);
}

// Per edit format: tokens per reply, the edit-apply rate, the valid rate of the applied code.
function renderEdits(data) {
  patchRows(document.querySelector("#edit-formats tbody"), Object.entries(data.edit_formats),
    ([format, f]) => row([format, f.replies,
      typeof f.tokens_per_reply === "number" ? f.tokens_per_reply.toFixed(0) : "n/a",
      f.edits ? `${f.edits_applied} of ${f.edits} (${pct(f.edit_apply_rate, 0)})` : "none",
      f.whole, f.applied ? `${f.valid} of ${f.applied} (${pct(f.valid_rate, 0)})` : "n/a"]));
}

function windowRow(w) {
  return row([`${w.start}-${w.end}`, w.n,
    `${pct(w.valid_rate, 0)} ${w.valid_ci ? `[${pct(w.valid_ci[0], 0)}, ${pct(w.valid_ci[1], 0)}]` : ""}`,
    `${pct(w.mean_acc)} ${w.acc_ci ? `[${pct(w.acc_ci[0])}, ${pct(w.acc_ci[1])}]` : ""}`,
    pct(w.best_acc), w.above_threshold === null ? "n/a" : `${w.above_threshold} of ${w.valid}`,
    w.novel ?? "n/a"]);
}

// Make `tbody` show `items`, replacing only the rows whose item changed (a new iteration
// changes the last window): the page is not laid out again from the top.
function patchRows(tbody, items, render) {
  const rows = tbody.rows;
  items.forEach((item, k) => {
    const key = JSON.stringify(item);
    if (rows[k] && rows[k].dataset.key === key) return;
    const tr = render(item);
    tr.dataset.key = key;
    if (rows[k]) rows[k].replaceWith(tr); else tbody.appendChild(tr);
  });
  while (rows.length > items.length) rows[rows.length - 1].remove();
}

// A macrotask boundary: the browser may paint and handle input before the next part.
function nextTask() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

// In three tasks (the facts and table, the trajectory, the window statistics), none long
// enough to hold up the page, even over 10,000 iterations.
async function renderRun(data) {
  take(data);
  renderFacts(data);
  chainBoxes(run.chains.map((c) => c.chain));
  options(document.getElementById("filter-status"), [...new Set(run.rows.map((r) => r.status))].sort(), view.status);
  options(document.getElementById("filter-chain"), [...new Set(run.rows.map((r) => r.chain))].sort((a, b) => a - b), view.chain);
  renderRows();
  await nextTask();
  drawTrajectory();
  await nextTask();
  renderWindows(data);
  renderEdits(data);
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

function controls(load) {
  for (const [id, key] of [["filter-status", "status"], ["filter-chain", "chain"]]) {
    document.getElementById(id).addEventListener("change", (event) => {
      view[key] = event.target.value;
      view.page = 1;
      writeView();
      renderRows();
    });
  }
  document.getElementById("page-prev").addEventListener("click", () => turnPage(-1));
  document.getElementById("page-next").addEventListener("click", () => turnPage(1));
  document.getElementById("window").addEventListener("change", (event) => {
    const value = event.target.value.trim();
    if (value !== "" && !/^[1-9][0-9]{0,5}$/.test(value)) return;
    view.window = value;
    writeView();
    load();
  });
}

function runPage() {
  const name = document.body.dataset.run;
  readView();
  charts = {trajectory: trajectoryChart(document.getElementById("trajectory")),
    failures: failuresChart(document.getElementById("failures"))};
  const load = loader(apiUrl, renderRun);
  controls(load);
  load();
  follow((names) => { if (names.includes(name)) load(); }, load);
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "runs") runsPage();
  else if (page === "run") runPage();
});
