// quickft studio: the curves. Each panel is {traces, layout, caption}, drawn with plotly.js from metrics.jsonl's
// rows, under the names `quickft run` records (TRL's for the methods' own figures: rewards/chosen, reward_std, ...).
"use strict";

// no mode bar (it covers the titles): drag to zoom, double-click to reset
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

function merged(base, extra) {
  const out = { ...base };
  for (const [k, v] of Object.entries(extra)) {
    out[k] = v && typeof v === "object" && !Array.isArray(v) && base[k] ? merged(base[k], v) : v;
  }
  return out;
}

// The panel's title is the page's (above the plot, see draw); the legend sits above the axes, outside the data
// (plotly pushes the top margin to make room for it).
function layout(title, ytitle, extra = {}) {
  return merged({
    title: { text: title }, margin: { l: 70, r: 20, t: 12, b: 40 },
    xaxis: { title: { text: "step" }, automargin: true }, yaxis: { title: { text: ytitle }, automargin: true },
    legend: { orientation: "h", x: 0, xanchor: "left", y: 1.0, yanchor: "bottom", traceorder: "normal" },
    uirevision: "keep",
  }, extra);
}

function series(rows, key, scale = 1) {
  const kept = rows.filter((r) => r[key] !== undefined && r[key] !== null);
  return { x: kept.map((r) => r.step), y: kept.map((r) => r[key] * scale) };
}

// Steps are whole numbers: a handful of them (a one-step run) gets a tick per step, never 0.5.
function stepAxis(traces) {
  const steps = traces.flatMap((t) => t.x || []);
  if (!steps.length) return {};
  const span = Math.max(...steps) - Math.min(0, ...steps);
  return span <= 10 ? { tickmode: "linear", tick0: 0, dtick: 1 } : { tickformat: "d" };
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

const MEMORY_AXIS = { yaxis: { rangemode: "tozero" } };  // from 0: a flat line at 1,157 MB is not a swing

function panel(traces, lay, caption = null, empty = null) {
  return { traces, layout: lay, caption, empty };
}

// ------------------------------------------------------------------------------------------------ one run

function isPreference(run) { return ["dpo", "orpo", "simpo", "kto"].includes(run.method); }

// The panels a run's page shows, in order: the method's own after the loss.
function panelIds(run) {
  const own = run.method === "grpo" ? ["reward", "groups"]
    : isPreference(run) ? (run.method === "kto" ? ["rewards", "margin", "kl"] : ["rewards", "margin", "wins"]) : [];
  return ["loss", ...own, "score", "lr", "grad", "speed", "memory"];
}

// Before DPO's or KTO's first update the policy is the reference model: every reward is exactly 0 (not measured).
const atReference = (r) => r["rewards/chosen"] === 0 && r["rewards/rejected"] === 0;

function preferencePanels(train, run) {
  const paired = run.method !== "kto";
  const [chosen, rejected] = paired ? ["chosen", "rejected"] : ["desirable", "undesirable"];
  const referenced = ["dpo", "kto"].includes(run.method);
  const what = referenced ? "β × the answer's log-probability ratio to the reference model"
    : run.method === "simpo" ? "β × the answer's own log-probability per token (no reference model)"
      : "β × the answer's own log-probability (no reference model)";
  const zero = train.filter(atReference);
  const zeroSteps = zero.map((r) => r.step).join(", ");
  const atStart = zero.length ? ` At step ${zeroSteps} the policy is still the reference model: every reward is `
    + "0, no preference measured yet." : "";
  const measured = train.filter((r) => !atReference(r));
  const panels = {
    rewards: panel([
      { ...series(train, "rewards/chosen"), name: `${chosen} answers`, mode: "lines+markers", marker: { size: 4 } },
      { ...series(train, "rewards/rejected"), name: `${rejected} answers`, mode: "lines+markers",
        marker: { size: 4 } },
      ...(zero.length ? [{ ...series(zero, "rewards/chosen"), name: "policy = reference (rewards 0)",
        mode: "markers", marker: { size: 10, symbol: "circle-open", color: "#555" } }] : []),
    ], layout(`rewards of the ${chosen} and ${rejected} answers`, "reward", {
      shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#999", width: 1 } }],
    }), `Each side's reward: ${what}; TRL's mean over each logging window. Watch the ${chosen} reward: falling `
      + `below 0 means the ${chosen} answers got less likely too.${referenced ? atStart : ""}`),
    margin: panel([{ ...series(train, "rewards/margins"), name: "margin", mode: "lines+markers",
      marker: { size: 4 } }], layout(paired ? "margin (chosen − rejected reward)" : "margin", "reward", {
      shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#999", width: 1 } }],
    }), paired ? "How far the chosen answers' reward is above the rejected ones': rising means the model prefers "
      + "the chosen answers more." : "KTO's answers come one at a time: TRL averages the margin over the "
      + "micro-batches holding both kinds, so it need not be the difference of the two rewards."),
  };
  if (paired) {
    panels.wins = panel([{ ...series(measured, "rewards/accuracies", 100), name: "chosen wins",
      mode: "lines+markers", marker: { size: 5 } }],
    layout("chosen wins", "% of pairs", { yaxis: { range: [0, 100] } }),
    "The share of pairs whose chosen answer's reward is higher than the rejected one's (TRL counts a tie as a loss)."
      + (zero.length ? ` Not drawn at step ${zeroSteps}: rewards 0 there (the policy is still the reference `
      + "model), which TRL would count as 0% wins." : ""));
  } else {
    panels.kl = panel([{ ...series(train, "kl"), name: "KL estimate", mode: "lines+markers", marker: { size: 4 } }],
      layout("KL estimate", "KL", { yaxis: { rangemode: "tozero" } }), "KTO's estimate of the KL divergence from the "
      + "reference model, from the other answers of each micro-batch.");
  }
  return panels;
}

function grpoPanels(train) {
  const names = [...new Set(train.flatMap((r) => Object.keys(r)))]
    .filter((k) => k.startsWith("rewards/") && k.endsWith("/mean"));
  const rewarded = train.filter((r) => r.reward !== undefined && r.reward_std !== undefined);
  const band = (sign) => ({ x: rewarded.map((r) => r.step), y: rewarded.map((r) => r.reward + sign * r.reward_std) });
  const traces = [
    { ...band(-1), name: "reward − spread", mode: "lines", line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
    { ...band(1), name: "± spread over the answers", mode: "lines", line: { width: 0 }, fill: "tonexty",
      fillcolor: "rgba(31,119,180,0.18)" },
    { ...series(train, "reward"), name: "reward (weighted sum)", mode: "lines+markers", line: { width: 3,
      color: "#1f77b4" }, marker: { size: 4 } },
  ];
  if (names.length > 1) {
    for (const key of names) traces.push({ ...series(train, key), name: key.split("/")[1], mode: "lines" });
  }
  return {
    reward: panel(traces, layout("reward", "reward"), "The reward functions' weighted sum, mean over each step's "
      + "answers (line), ± its spread over them (band: TRL's reward_std), and each function's own mean; TRL's mean "
      + "over each logging window."),
    groups: panel([
      { ...series(train, "frac_reward_zero_std", 100), name: "groups with no spread", mode: "lines+markers",
        marker: { size: 4 } },
      { ...series(train, "completions/clipped_ratio", 100), name: "answers cut at the length limit",
        mode: "lines+markers", marker: { size: 4 } },
    ], layout("groups with no spread", "%", { yaxis: { range: [0, 100] } }), "A group whose answers all scored "
      + "the same has no spread: it teaches nothing. Answers cut at max_completion_length are shown beside it."),
  };
}

// One run's panels: {id: panel}
function runPanels(rows, run) {
  const train = rows.filter((r) => r.loss !== undefined);
  const evals = rows.filter((r) => r.loss === undefined);
  const score = [{ ...series(evals, "case_score", 100), name: "during training", mode: "lines+markers" }];
  if (run.final_score) {
    score.push({ x: [run.final_score.step], y: [100 * run.final_score.score], name: "after training",
      mode: "markers", marker: { size: 11, symbol: "diamond" } });
  }
  const last = Math.max(1, ...train.map((r) => r.step), ...evals.map((r) => r.step),
    ...(run.final_score ? [run.final_score.step] : []));
  if (run.target) {
    score.push({ x: [0, last], y: [100 * run.target, 100 * run.target], name: "target "
      + (100 * run.target).toFixed(0) + "%", mode: "lines", line: { dash: "dash", color: "green" } });
  }
  const grpo = run.method === "grpo";
  return {
    loss: panel([
      { ...series(train, "loss"), name: "loss", mode: "lines+markers", marker: { size: 4 }, opacity: 0.55 },
      { ...series(train, "loss_smoothed"), name: "smoothed (as recorded)", mode: "lines", line: { width: 3 } },
      { ...series(evals, "eval_loss"), name: "eval loss", mode: "lines+markers" },
    ], layout(grpo ? "GRPO objective" : "training loss", "loss"), grpo ? "GRPO's loss hovers around 0 by "
      + "construction: judge the run by its reward and its test cases." : null),
    score: panel(score, layout("test-case score", "% right", { xaxis: { range: [0, last + Math.max(0.3, last / 30)] },
      yaxis: { range: [0, 100] } }),
      null,
      "no test cases were scored in this run"),
    lr: panel([{ ...series(train, "learning_rate"), name: "learning rate" }],
      layout("learning rate", "lr", { yaxis: { rangemode: "tozero", exponentformat: "e" } })),
    grad: panel([{ ...series(train, "grad_norm"), name: "grad norm" }], layout("gradient norm (before clipping)",
      "norm", { yaxis: { rangemode: "tozero" } })),
    speed: panel([{ ...series(train, "tokens_per_s"), name: "tokens/s" }], layout("tokens/s (real tokens)",
      "tokens/s", { yaxis: { rangemode: "tozero" } })),
    memory: panel(memoryTraces(train), layout("memory", "MB", MEMORY_AXIS)),
    ...(grpo ? grpoPanels(train) : isPreference(run) ? preferencePanels(train, run) : {}),
  };
}

// The panels' places on the page: each a title, the plot, and a caption under it (filled in by draw).
function plotDivs(prefix, ids) {
  return el("div", { class: "grid" }, ids.map((id) => el("figure", { class: "plot-box", id: prefix + id + "-box" },
    el("h4", { class: "plot-title" }), el("div", { class: "plot", id: prefix + id }),
    el("figcaption", { class: "dim" }))));
}

// An empty panel says why: nothing yet (the run is still going), or not recorded in this run (it has ended).
function draw(prefix, panels, running) {
  for (const [id, { traces, layout: { title, ...lay }, caption, empty }] of Object.entries(panels)) {
    const div = document.getElementById(prefix + id);
    if (!div) continue;
    const box = div.parentElement;
    box.querySelector(".plot-title").textContent = title.text;
    box.querySelector("figcaption").textContent = caption || "";
    const none = traces.every((t) => !t.x || !t.x.length);
    const text = running ? "nothing recorded yet" : empty || "not recorded in this run";
    const shown = none ? { ...lay, xaxis: { visible: false }, yaxis: { visible: false }, annotations: [{
      text, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] }
      : merged(lay, { xaxis: stepAxis(traces) });
    div.dataset.empty = none ? text : "";
    Plotly.react(div, traces, shown, PLOT_CONFIG);
  }
}

// ------------------------------------------------------------------------------------------------ compare

function comparePanels(names, all) {
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
  return {
    loss: panel(plots.loss, layout("training loss", "loss")),
    eval: panel(plots.eval, layout("eval loss", "loss"), null, "no eval loss in these runs"),
    lr: panel(plots.lr, layout("learning rate", "lr", { yaxis: { rangemode: "tozero", exponentformat: "e" } })),
    speed: panel(plots.speed, layout("tokens/s", "tokens/s", { yaxis: { rangemode: "tozero" } })),
    memory: panel(plots.memory, layout("memory", "MB", MEMORY_AXIS)),
    score: panel(plots.score, layout("test-case score", "% right", { yaxis: { range: [0, 100] } }), null,
      "no test cases were scored during these runs"),
  };
}
