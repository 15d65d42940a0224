// quickft studio: the page. Plain JavaScript, no build step; every request goes to the studio's own /api.
// Views (from the address's #): #/ the runs, #/run/NAME one run, #/compare/A,B,... runs overlaid.
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

// ------------------------------------------------------------------------------------------------ curves

// no mode bar (it covers the titles): drag to zoom, double-click to reset
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

function layout(title, ytitle, extra = {}) {
  return Object.assign({
    title: { text: title, font: { size: 14 } }, margin: { l: 75, r: 20, t: 40, b: 45 },
    xaxis: { title: { text: "step" } }, yaxis: { title: { text: ytitle } },
    legend: { x: 1, xanchor: "right", y: 1, bgcolor: "rgba(255,255,255,0.7)" }, uirevision: "keep",
  }, extra);
}

function series(rows, key, scale = 1) {
  const kept = rows.filter((r) => r[key] !== undefined && r[key] !== null);
  return { x: kept.map((r) => r.step), y: kept.map((r) => r[key] * scale) };
}

function memoryTraces(rows, prefix = "") {
  if (rows.some((r) => r.gpu_allocated_mb !== undefined)) {
    return [
      { ...series(rows, "gpu_allocated_mb"), name: prefix + "GPU allocated" },
      { ...series(rows, "gpu_reserved_mb"), name: prefix + "GPU reserved" },
    ];
  }
  return [{ ...series(rows, "rss_mb"), name: prefix + "resident memory (RSS)" }];
}

// One run's plots: {id: [traces, layout]}
function runPlots(rows, target) {
  const train = rows.filter((r) => r.loss !== undefined);
  const evals = rows.filter((r) => r.loss === undefined);
  const scoreLayout = layout("test-case score", "% right", { yaxis: { title: { text: "% right" }, range: [0, 100] } });
  const score = [{ ...series(evals, "case_score", 100), name: "test cases right", mode: "lines+markers" }];
  if (target) {
    const steps = train.map((r) => r.step).concat(evals.map((r) => r.step));
    const last = Math.max(1, ...steps);
    score.push({ x: [0, last], y: [100 * target, 100 * target], name: "target " + (100 * target).toFixed(0) + "%",
      mode: "lines", line: { dash: "dash", color: "green" } });
  }
  return {
    loss: [[
      { ...series(train, "loss"), name: "loss", mode: "lines+markers", marker: { size: 4 }, opacity: 0.55 },
      { ...series(train, "loss_smoothed"), name: "smoothed (as recorded)", mode: "lines", line: { width: 3 } },
      { ...series(evals, "eval_loss"), name: "eval loss", mode: "lines+markers" },
    ], layout("training loss", "loss")],
    lr: [[{ ...series(train, "learning_rate"), name: "learning rate" }], layout("learning rate", "lr")],
    grad: [[{ ...series(train, "grad_norm"), name: "grad norm" }], layout("gradient norm (before clipping)", "norm")],
    speed: [[{ ...series(train, "tokens_per_s"), name: "tokens/s" }], layout("tokens/s (real tokens)", "tokens/s")],
    memory: [memoryTraces(train), layout("memory", "MB")],
    score: [score, scoreLayout],
  };
}

function plotDivs(prefix, ids) {
  return el("div", { class: "grid" }, ids.map((id) => el("div", { class: "plot", id: prefix + id })));
}

function draw(prefix, plots) {
  for (const [id, [traces, lay]] of Object.entries(plots)) {
    const div = document.getElementById(prefix + id);
    if (!div) continue;
    const empty = traces.every((t) => !t.x || !t.x.length);
    const shown = empty ? { ...lay, xaxis: { visible: false }, yaxis: { visible: false }, annotations: [{
      text: "nothing recorded (yet)", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] } : lay;
    Plotly.react(div, traces, shown, PLOT_CONFIG);
  }
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
  const panes = {
    curves: plotDivs("plot-", ["loss", "lr", "grad", "speed", "memory", "score"]),
    report: reportPane(run),
    "test cases": casesPane(run),
    settings: settingsPane(run),
    chat: chatPane(run),
    "data masking": maskingPane(run),
  };
  const body = el("div", { id: "pane" });
  const tabs = el("div", { class: "tabs" }, Object.keys(panes).map((key) => el("button", {
    "data-tab": key, onclick: () => pick(key) }, key)));
  function pick(key) {
    for (const b of tabs.children) b.classList.toggle("on", b.dataset.tab === key);
    body.replaceChildren(panes[key]);
    if (key === "curves") draw("plot-", runPlots(rows, run.target));
  }
  show(
    el("h2", {}, "Run ", el("code", {}, run.name), " ", status),
    el("div", { class: "facts" },
      el("span", {}, el("b", {}, "backend"), run.backend || "-"),
      el("span", {}, el("b", {}, "model"), run.model),
      el("span", {}, el("b", {}, "method"), run.method),
      el("span", {}, el("b", {}, "steps"), steps, run.max_steps > 0 ? " / " + run.max_steps : ""),
      el("span", {}, el("b", {}, "best test-case score"), fmt.score(run.best_score))),
    tabs, body);
  pick("curves");

  async function poll() {
    let data;
    try { data = await api(`/api/runs/${encodeURIComponent(name)}/metrics?since=${rows.length}`); }
    catch (e) { return; }  // a run directory being written: try again at the next tick
    if (token !== viewToken) return;
    rows.push(...data.rows);
    const train = rows.filter((r) => r.loss !== undefined);
    if (train.length) steps.textContent = String(train[train.length - 1].step);
    if (document.getElementById("plot-loss")) draw("plot-", runPlots(rows, run.target));
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

function reportPane(run) {
  if (!run.report) return el("p", { class: "dim" }, "the end report appears here when the run finishes (",
    run.status, ")");
  return el("pre", { id: "report" }, run.report);
}

function casesPane(run) {
  if (!run.samples.length) return el("p", { class: "dim" }, "no test-case answers yet: they are written when the run"
    + " finishes");
  const right = run.samples.filter((s) => s.correct).length;
  return el("div", {},
    el("p", {}, `${right} of ${run.samples.length} right (${fmt.score(right / run.samples.length)})`),
    el("table", { id: "cases" },
      el("tr", {}, ["", "prompt", "answer", "expected"].map((h) => el("th", {}, h))),
      run.samples.map((s) => el("tr", {},
        el("td", { class: s.correct ? "ok" : "bad" }, s.correct ? "✓" : "✗"),
        el("td", {}, s.prompt), el("td", {}, s.answer), el("td", {}, s.reference)))));
}

function flatten(obj, prefix = "", out = []) {
  for (const [k, v] of Object.entries(obj)) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, prefix + k + ".", out);
    else out.push([prefix + k, v]);
  }
  return out;
}

function settingsPane(run) {
  return el("div", {},
    el("p", { class: "dim" }, "recipe.json: the settings the run trained with (defaults filled in)"),
    el("table", { id: "settings" }, flatten(run.recipe).map(([k, v]) => el("tr", {},
      el("td", {}, el("code", {}, k)), el("td", {}, JSON.stringify(v))))),
    run.backend_info ? el("h3", {}, "backend.json") : null,
    run.backend_info ? el("pre", {}, JSON.stringify(run.backend_info, null, 2)) : null);
}

// ------------------------------------------------------------------------------------------------ chat

// Reads a server-sent-events body from fetch: calls onEvent with each data object.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (event.startsWith("data: ")) onEvent(JSON.parse(event.slice(6)));
    }
  }
}

function chatPane(run) {
  if (run.status !== "completed") {
    return el("p", { class: "dim" }, "chat needs a completed run: quickft serve loads the finished model (this run is ",
      run.status, ")");
  }
  const messages = [];
  const log = el("div", { class: "chatlog", id: "chat-log" });
  const input = el("input", { type: "text", id: "chat-input", placeholder: "a message, e.g. a prompt like the"
    + " training data's" });
  const send = el("button", { class: "act", id: "chat-send", onclick: ask }, "send");
  const both = el("button", { class: "act", id: "chat-base", onclick: askBoth }, "base vs fine-tuned");
  const reset = el("button", { onclick: () => { messages.length = 0; log.replaceChildren(); } }, "reset");
  const note = el("p", { class: "dim", id: "chat-note" },
    "answers stream from quickft serve (started on loopback the first time you ask; the first answer waits for the "
    + "model to load). base vs fine-tuned answers the message once with each model, as quickft chat --compare-base.");
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") ask(); });

  function line(role, text) {
    const body = el("span", { class: "text" }, text);
    const who = role === "user" ? "you" : role === "assistant" ? run.name : role;
    log.append(el("div", { class: "msg " + role }, el("span", { class: "who" }, who), body));
    log.scrollTop = log.scrollHeight;
    return body;
  }

  async function ask() {
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send.disabled = true;
    messages.push({ role: "user", content: text });
    line("user", text);
    const answer = line("assistant", "");
    answer.classList.add("answer");
    answer.dataset.chunks = "0";
    answer.dataset.done = "false";
    try {
      const res = await fetch(`/api/runs/${encodeURIComponent(run.name)}/chat`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ messages }) });
      if (!res.ok) throw new Error((await res.json()).error || res.statusText);
      await readEvents(res, (event) => {
        if (event.text) {
          answer.textContent += event.text;
          answer.dataset.chunks = String(Number(answer.dataset.chunks) + 1);
          log.scrollTop = log.scrollHeight;
        }
        if (event.error) throw new Error(event.error);
      });
      messages.push({ role: "assistant", content: answer.textContent });
    } catch (e) {
      answer.replaceChildren(errorBox(e));
      messages.pop();
    } finally {
      answer.dataset.done = "true";
      send.disabled = false;
    }
  }

  async function askBoth() {
    const text = input.value.trim();
    if (!text) return;
    both.disabled = true;
    const box = el("div", { class: "side", id: "chat-compare" },
      el("div", {}, el("h3", {}, "fine-tuned"), el("pre", { class: "tuned" }, "...")),
      el("div", {}, el("h3", {}, "base model"), el("pre", { class: "base" }, "...")));
    log.append(el("div", { class: "msg user" }, el("span", { class: "who" }, "you"), text), box);
    try {
      const out = await api(`/api/runs/${encodeURIComponent(run.name)}/compare-base`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ messages: [{ role: "user", content: text }] }) });
      if (out.error) throw new Error(out.error);
      box.querySelector(".tuned").textContent = out.tuned;
      box.querySelector(".base").textContent = out.base;
      box.querySelectorAll("h3")[1].textContent = out.base_label;
    } catch (e) {
      box.replaceChildren(errorBox(e));
    } finally {
      both.disabled = false;
    }
  }

  return el("div", {}, note, log, el("div", { class: "chatbar" }, input, send, both, reset));
}

// ------------------------------------------------------------------------------------------------ masking

function maskingPane(run) {
  const out = el("div", { id: "masking" });
  const count = el("input", { type: "number", value: 3, min: 1, max: 20, style: "width: 4em" });
  const go = el("button", { class: "act", id: "masking-show", onclick: load }, "show");
  async function load() {
    go.disabled = true;
    out.replaceChildren(el("p", { class: "dim" }, "reading the data and tokenizing, as quickft data does ..."));
    try {
      const data = await api(`/api/runs/${encodeURIComponent(run.name)}/masking`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ n: Number(count.value) }) });
      const c = data.report.counts, t = data.report.tokens;
      out.replaceChildren(
        el("p", {}, `${c.read} read, ${c.kept_for_training} kept for training; ${t.total.toLocaleString()} tokens, `
          + `${t.trained.toLocaleString()} of them in the loss. Token lengths: min ${t.min}, p50 ${t.p50}, `
          + `p99 ${t.p99}, max ${t.max} (max_seq_length ${data.report.max_seq_length}).`),
        el("p", {}, el("span", { class: "tokens-key trained" }, "trained tokens"), " are highlighted; ",
          el("span", { class: "dim" }, "masked tokens (the prompt: no loss) are grey")),
        ...data.examples.map((ex, i) => el("div", {}, el("h3", {}, "example " + (i + 1)),
          el("div", { class: "tokens" }, ex.pieces.map((p) => el("span", { class: p.trained ? "trained" : "masked" },
            p.text)), ex.more_tokens ? el("i", {}, ` … (${ex.more_tokens} more tokens)`) : null))));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    } finally {
      go.disabled = false;
    }
  }
  return el("div", {},
    el("p", { class: "dim" }, "what quickft data --show N prints for this run's recipe: the training sequences as "
      + "the model reads them, with the tokens the loss is computed on highlighted (data paths are read from where "
      + "the studio was started)."),
    el("p", {}, "examples ", count, " ", go), out);
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
    const plots = { loss: [], eval: [], lr: [], speed: [], memory: [], score: [] };
    all.forEach((data, i) => {
      const train = data.rows.filter((r) => r.loss !== undefined);
      const evals = data.rows.filter((r) => r.loss === undefined);
      const name = names[i];
      plots.loss.push({ ...series(train, "loss"), name, mode: "lines" });
      plots.eval.push({ ...series(evals, "eval_loss"), name, mode: "lines+markers" });
      plots.lr.push({ ...series(train, "learning_rate"), name });
      plots.speed.push({ ...series(train, "tokens_per_s"), name });
      plots.memory.push(...memoryTraces(train, name + ": "));
      plots.score.push({ ...series(evals, "case_score", 100), name, mode: "lines+markers" });
    });
    draw("cmp-", {
      loss: [plots.loss, layout("training loss", "loss")],
      eval: [plots.eval, layout("eval loss", "loss")],
      lr: [plots.lr, layout("learning rate", "lr")],
      speed: [plots.speed, layout("tokens/s", "tokens/s")],
      memory: [plots.memory, layout("memory", "MB")],
      score: [plots.score, layout("test-case score", "% right", { yaxis: { range: [0, 100] } })],
    });
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
