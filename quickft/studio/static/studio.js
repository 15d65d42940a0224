// quickft studio: the page. Plain JavaScript, no build step; every request goes to the studio's own /api.
// Views (from the address's #): #/ the runs, #/run/NAME one run, #/compare/A,B,... runs overlaid. The curves are
// plots.js's, the run page's other tabs tabs.js's.
"use strict";

const POLL_MS = 2000;
let timer = null;      // the view's polling timer: cleared when the view changes
let viewToken = 0;     // a view's async work stops drawing once another view has started

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ? body.error + (body.hint ? "\nfix: " + body.hint : "") : body.detail);
  return body;
}

const fmt = {
  score: (v) => (v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%"),
  num: (v, d = 4) => (v === null || v === undefined ? "-" : Number(v).toFixed(d)),
};

function statusBadge(status) {
  return el("span", { class: "status " + status, "data-status": status }, status);
}

function errorBox(e) {
  return el("div", { class: "error" }, String(e.message || e));
}

function show(...nodes) {
  const view = document.getElementById("view");
  view.replaceChildren(...nodes);
}

// ------------------------------------------------------------------------------------------------ the runs

async function runsView() {
  const token = viewToken;
  const table = el("table", { id: "runs" });
  const compareButton = el("button", { class: "act", id: "compare-selected", disabled: true,
    onclick: () => { location.hash = "#/compare/" + selected().map(encodeURIComponent).join(","); } },
    "compare selected");
  const selected = () => [...table.querySelectorAll("input:checked")].map((c) => c.value);
  show(el("h2", {}, "Runs"), table, el("p", {}, compareButton, " ",
    el("span", { class: "dim" }, "tick two or more runs to overlay their curves")));
  table.addEventListener("change", () => { compareButton.disabled = selected().length < 2; });

  async function refresh() {
    let data;
    try { data = await api("/api/runs"); } catch (e) { show(errorBox(e)); return; }
    if (token !== viewToken) return;
    document.getElementById("outputs").textContent = data.outputs;
    const ticked = new Set(selected());
    table.replaceChildren(el("tr", {}, ["", "run", "status", "backend", "model", "method", "steps",
      "best test-case score"].map((h) => el("th", {}, h))));
    for (const run of data.runs) {
      table.append(el("tr", { "data-run": run.name },
        el("td", {}, el("input", { type: "checkbox", value: run.name, checked: ticked.has(run.name) })),
        el("td", {}, el("a", { href: "#/run/" + encodeURIComponent(run.name) }, run.name)),
        el("td", {}, statusBadge(run.status)),
        el("td", {}, run.backend || "-"),
        el("td", {}, run.model || "-"),
        el("td", {}, run.method),
        el("td", { class: "num" }, run.steps + (run.max_steps > 0 ? " / " + run.max_steps : "")),
        el("td", { class: "num" }, fmt.score(run.best_score))));
    }
    if (!data.runs.length) table.append(el("tr", {}, el("td", { colspan: 8, class: "dim" },
      "no runs yet: start one with quickft run RECIPE.py; it appears here")));
    compareButton.disabled = selected().length < 2;
  }
  await refresh();
  timer = setInterval(refresh, POLL_MS);
}

// ------------------------------------------------------------------------------------------------ one run

async function runView(name) {
  const token = viewToken;
  let run;
  try { run = await api("/api/runs/" + encodeURIComponent(name)); } catch (e) { show(errorBox(e)); return; }
  if (token !== viewToken) return;
  const rows = [];
  const status = el("span", { id: "run-status" }, statusBadge(run.status));
  const steps = el("span", { id: "run-steps" }, String(run.steps));
  const progress = el("div", { id: "run-progress" });
  const ids = panelIds(run);
  const panes = {
    curves: plotDivs("plot-", ids),
    report: reportPane(run),
    "test cases": casesPane(run),
    settings: settingsPane(run),
    chat: chatPane(run),
    "data masking": maskingPane(run),
  };
  const body = el("div", { id: "pane" });
  const tabs = el("div", { class: "tabs" }, Object.keys(panes).map((key) => el("button", {
    "data-tab": key, onclick: () => pick(key) }, key)));
  const redraw = () => draw("plot-", runPanels(rows, run), run.status === "running");
  function pick(key) {
    for (const b of tabs.children) b.classList.toggle("on", b.dataset.tab === key);
    body.replaceChildren(panes[key]);
    if (key === "curves") redraw();
  }
  show(
    el("h2", {}, "Run ", el("code", {}, run.name), " ", status),
    el("div", { class: "facts" },
      el("span", {}, el("b", {}, "backend"), run.backend || "-"),
      el("span", {}, el("b", {}, "model"), run.model),
      el("span", {}, el("b", {}, "method"), run.method),
      el("span", {}, el("b", {}, "steps"), steps, run.max_steps > 0 ? " / " + run.max_steps : ""),
      el("span", {}, el("b", {}, "best test-case score"), fmt.score(run.best_score))),
    progress, tabs, body);
  showProgress(progress, run.progress);
  pick("curves");

  async function poll() {
    let data;
    try { data = await api(`/api/runs/${encodeURIComponent(name)}/metrics?since=${rows.length}`); }
    catch (e) { return; }  // a run directory being written: try again at the next tick
    if (token !== viewToken) return;
    rows.push(...data.rows);
    const train = rows.filter((r) => r.loss !== undefined);
    if (train.length) steps.textContent = String(train[train.length - 1].step);
    showProgress(progress, data.progress);
    if (document.getElementById("plot-loss")) redraw();
    if (data.status !== run.status) {  // finished, failed or interrupted: the report and answers are there now
      clearInterval(timer);
      runView(name);
      return;
    }
    if (data.status !== "running") clearInterval(timer);
  }
  await poll();
  if (run.status === "running") timer = setInterval(poll, POLL_MS);
}

function duration(s) {
  s = Math.round(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
  return Math.floor(s / 3600) + " h " + String(Math.floor(s / 60) % 60).padStart(2, "0") + " min";
}

// A running run: its step of the planned steps, the time it has trained, and the time left at its recent pace.
function showProgress(box, p) {
  if (!p) { box.replaceChildren(); box.hidden = true; return; }
  box.hidden = false;
  const of = p.planned ? ` of ${p.planned_exact ? "" : "about "}${p.planned}` : "";
  const share = p.fraction !== null ? ` (${Math.floor(100 * p.fraction)}%)` : "";
  const elapsed = p.elapsed_s === null ? "" : (p.phase === "setting up" ? "setting up for " : "training for ")
    + duration(p.elapsed_s);
  const done = p.planned_exact && p.step >= p.planned;  // the steps are over: the run saves and answers its cases
  const eta = done ? "the steps are done: saving the model, answering the test cases"
    : p.eta_s !== null ? "about " + duration(p.eta_s) + " left" : p.estimating ? "time left: estimating …" : "";
  const pace = p.pace_s ? ` at ${p.pace_s < 1 ? (1 / p.pace_s).toFixed(1) + " steps/s" : p.pace_s.toFixed(2)
    + " s/step"} (the last minute's pace)` : "";
  box.replaceChildren(
    p.planned ? el("progress", { max: p.planned, value: p.step }) : null,
    el("span", { class: "what", id: "progress-step" }, p.phase === "setting up" ? "setting up (loading the model, "
      + "tokenizing)" : `step ${p.step}${of}${share}`),
    el("span", { id: "progress-elapsed" }, elapsed),
    el("span", { id: "progress-eta" }, eta + (p.eta_s !== null && !done ? pace : "")));
}

// ------------------------------------------------------------------------------------------------ compare

async function compareView(names) {
  const token = viewToken;
  show(el("h2", {}, "Compare ", names.map((n) => el("code", {}, n + " "))), el("p", { class: "dim" }, "loading ..."));
  let cmp;
  try {
    cmp = await api("/api/compare?" + names.map((n) => "run=" + encodeURIComponent(n)).join("&"));
  } catch (e) { show(errorBox(e)); return; }
  if (token !== viewToken) return;
  const settings = Object.entries(cmp.settings);
  show(
    el("h2", {}, "Compare ", names.map((n) => [el("a", { href: "#/run/" + encodeURIComponent(n) }, n), " "])),
    plotDivs("cmp-", ["loss", "eval", "lr", "speed", "memory", "score"]),
    el("h3", {}, "recipe settings that differ (as quickft compare computes them)"),
    settings.length ? el("table", { id: "cmp-settings" },
      el("tr", {}, el("th", {}, "setting"), names.map((n) => el("th", {}, n))),
      settings.map(([key, values]) => el("tr", {}, el("td", {}, el("code", {}, key)),
        values.map((v) => el("td", {}, JSON.stringify(v))))))
      : el("p", { id: "cmp-settings" }, "the same in every run"),
    compareTable(cmp));

  async function refresh() {
    const all = await Promise.all(names.map((n) => api(`/api/runs/${encodeURIComponent(n)}/metrics`)));
    if (token !== viewToken) return;
    draw("cmp-", comparePanels(names, all), all.some((d) => d.status === "running"));
    if (!all.some((d) => d.status === "running")) clearInterval(timer);
  }
  await refresh();
  timer = setInterval(refresh, POLL_MS);
}

function compareTable(cmp) {
  if (!cmp.table) return el("p", { class: "dim" }, "the full table of quickft compare needs finished runs: ",
    cmp.table_missing || "");
  const rows = [["model", "model"], ["backend", "backend"], ["steps", "steps"], ["runtime_s", "runtime (s)"],
    ["tokens_per_s", "tokens/s"], ["final_loss", "final loss"], ["eval_loss", "eval loss"],
    ["case_score", "test cases right"], ["peak_memory_mb", "peak memory (MB)"]];
  const cell = (row, key) => {
    const v = row[key];
    const text = key === "case_score" ? fmt.score(v) : typeof v === "number" ? fmt.num(v, v > 100 ? 0 : 4) : v ?? "-";
    const ratio = row.ratios[key];
    return el("td", {}, text, ratio && row !== cmp.table[0] ? el("span", { class: "dim" }, "  " + ratio.text) : null);
  };
  return el("div", {}, el("h3", {}, "quickft compare (ratios to the first run)"),
    el("table", { id: "cmp-table" }, el("tr", {}, el("th", {}, ""), cmp.runs.map((n) => el("th", {}, n))),
      rows.map(([key, label]) => el("tr", {}, el("td", {}, label), cmp.table.map((row) => cell(row, key))))));
}

// ------------------------------------------------------------------------------------------------ routing

function route() {
  clearInterval(timer);
  viewToken += 1;
  const hash = decodeURIComponent(location.hash.slice(1) || "/");
  if (hash.startsWith("/run/")) runView(hash.slice(5));
  else if (hash.startsWith("/compare/")) compareView(hash.slice(9).split(",").filter(Boolean));
  else runsView();
}

window.addEventListener("hashchange", route);
route();
