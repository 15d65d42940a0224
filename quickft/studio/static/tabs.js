// quickft studio: the run page's tabs beside its curves: the end report, the test cases, the settings, chat (and
// base vs fine-tuned), the masking preview. Each pane is built from the run's /api data (studio.js: el, api, fmt).
"use strict";

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

// The settings as recipe.json has them, each against the Recipe dataclass's default: what differs is highlighted
// (set in the recipe file, on the command line, or filled in by quickft run); other methods' sections are left out.
function settingsPane(run) {
  const view = run.settings;
  const only = el("input", { type: "checkbox", id: "settings-differ-only" });
  const table = el("table", { id: "settings" },
    el("tr", {}, el("th", {}, "setting"), el("th", {}, "value"), el("th", {}, "default (Recipe)")),
    view.rows.map((s) => el("tr", { class: s.differs ? "differs" : "", "data-key": s.key },
      el("td", {}, el("code", {}, s.key)), el("td", {}, JSON.stringify(s.value)),
      el("td", { class: "dim" }, s.required ? "(required)" : s.differs ? JSON.stringify(s.default) : "default"))));
  only.addEventListener("change", () => table.classList.toggle("differ-only", only.checked));
  const differ = view.rows.filter((s) => s.differs).length;
  return el("div", {},
    el("p", { class: "dim" }, "recipe.json: the settings the run trained with. ", el("span", { class: "differs-key" },
      `${differ} highlighted`), " differ from the Recipe defaults (quickft/recipe.py): set in the recipe file, on "
      + "the command line, or filled in by quickft run." + (view.hidden_sections.length ? " Not shown: the "
      + `settings of other methods (${view.hidden_sections.join(", ")}), which this ${view.method} run does not read.`
      : "")),
    el("p", {}, el("label", {}, only, " only what differs from the defaults")),
    table,
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
      // as quickft chat: bytes that never formed a character are left out, and counted
      for (const side of ["tuned", "base"]) {
        const n = (out.invalid_utf8 || {})[side];
        if (n) box.querySelector("." + side).after(el("p", { class: "dim invalid" },
          `${n} piece(s) of invalid UTF-8 left out (a character cut off, as quickft chat leaves it out)`));
      }
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
