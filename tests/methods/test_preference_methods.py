"""ORPO, SimPO and KTO (method="orpo" / "simpo" / "kto"): KTO's labelled answers read from the shapes TRL and others
publish, and a real run of each method on the tiny model whose first logged figures are recomputed here from the
starting model (before the first update the policy is the starting model, so each figure has a closed form)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import re
import subprocess
import sys

import pytest
from conftest import PROMPT, SUMS, check_eval_and_merged_export, requires_unsloth, unsloth_rows, write_recipe

from quickft.cli import main
from quickft.data.pairs import Judged, read_judged
from quickft.errors import UserError
from quickft.recipe import Data

# ---------------------------------------------------------------------------------------------- KTO's data

KTO_SHAPES = {
    # TRL's unpaired preference, standard (text) form: trl-lib/kto-mix-14k's columns
    "trl text": (
        {"prompt": "¿Cuánto es 2 + 2?", "completion": "4", "label": True},
        "¿Cuánto es 2 + 2?",
        "4",
        True,
    ),
    # TRL's unpaired preference, conversational form (prompt and completion as message lists)
    "trl messages": (
        {
            "prompt": [{"role": "user", "content": "天空是什么颜色？"}],
            "completion": [{"role": "assistant", "content": "绿色。"}],
            "label": False,
        },
        [{"role": "user", "content": "天空是什么颜色？"}],
        {"role": "assistant", "content": "绿色。"},
        False,
    ),
    # one conversation with its last answer labelled (how chat logs with thumbs up / down are exported)
    "messages + label": (
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is the capital of Spain?"},
                {"role": "assistant", "content": "Madrid."},
            ],
            "label": 1,
        },
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of Spain?"},
        ],
        {"role": "assistant", "content": "Madrid."},
        True,
    ),
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def answer_of(judged: Judged):
    a = judged.answer
    return a if isinstance(a, str) else {"role": a["role"], "content": a["content"]}


@pytest.mark.parametrize("shape", list(KTO_SHAPES))
def test_published_kto_shapes_read_into_one_labelled_answer(tmp_path, shape):
    record, prompt, answer, good = KTO_SHAPES[shape]
    other = dict(record, label=not record["label"]) if "label" in record else record
    path = write_jsonl(tmp_path / "kto.jsonl", [record, other])
    _, judged, drops = read_judged(path, Data(path=str(path)))
    first = judged[0]
    prompt_read = (
        first.prompt
        if isinstance(first.prompt, str)
        else [{"role": m["role"], "content": m["content"]} for m in first.prompt]
    )
    assert (prompt_read, answer_of(first), first.good) == (prompt, answer, good)
    assert [j.good for j in judged] == [good, not good] and drops == []


def test_a_csv_export_with_multiline_answers_and_text_labels(tmp_path):
    path = tmp_path / "kto.csv"
    path.write_text(
        'prompt,completion,label\n"Explica la suma","Sumar es juntar:\n2 + 2 = 4",True\n"Explica la resta","No sé",False\n',
        encoding="utf-8",
    )
    _, judged, _ = read_judged(path, Data(path=str(path)))
    assert [(j.answer, j.good) for j in judged] == [("Sumar es juntar:\n2 + 2 = 4", True), ("No sé", False)]


def test_preference_pairs_split_into_a_desirable_and_an_undesirable_answer(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "¿Cuánto es 1 + 1?", "chosen": "2", "rejected": "3"},
            {"prompt": "¿Cuánto es 2 + 1?", "chosen": "3", "rejected": "3"},  # the same answer twice: dropped
        ],
    )
    shape, judged, drops = read_judged(path, Data(path=str(path)))
    assert [(j.prompt, j.answer, j.good) for j in judged] == [
        ("¿Cuánto es 1 + 1?", "2", True),
        ("¿Cuánto es 1 + 1?", "3", False),
    ]
    assert "split" in shape and drops == [(f"{path}:2", "chosen and rejected are the same answer")]


@pytest.mark.parametrize(
    "records, says",
    [
        ([{"prompt": "a", "completion": "b", "label": "maybe"}], "label 'maybe' is not true or false"),
        ([{"prompt": "a", "completion": "b", "label": True}] * 2, "every answer is labelled desirable"),
        ([{"prompt": "a", "completion": "b"}], "not KTO data: no 'label'"),
        ([{"messages": [{"role": "user", "content": "a"}], "label": True}], "must end with the assistant answer"),
        ([{"prompt": "a", "completion": [{"role": "user", "content": "b"}], "label": True}], "must end with the"),
    ],
)
def test_kto_records_that_cannot_train_are_named(tmp_path, records, says):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(UserError, match=None) as e:
        read_judged(path, Data(path=str(path)))
    assert says in e.value.message


# ---------------------------------------------------------------------------------------------- real runs


def sums_pairs(tmp, n: int):
    rng = random.Random(0)
    sums = SUMS[:n]
    return write_jsonl(
        tmp / "pairs.jsonl",
        [
            {"prompt": f"¿Cuánto es {a} + {b}?", "chosen": str(a + b), "rejected": str(a + b + rng.choice([-1, 1, 10]))}
            for a, b in sums
        ],
    )


SETTINGS = {
    "orpo": "orpo=ORPO(beta=0.5)",
    "simpo": "simpo=SimPO(beta=2.0, gamma_beta_ratio=0.5)",
    "kto": "kto=KTO(beta=0.1)",
}


@pytest.fixture(scope="module", params=list(SETTINGS))
def method_run(request, tmp_path_factory, tiny_model_dir):
    """A run of each method on the tiny model, LoRA on PEFT: 8 pairs (16 KTO answers), one micro-batch of all of them,
    so the first step's batch is the whole data set."""
    method = request.param
    tmp = tmp_path_factory.mktemp(method)
    pairs = sums_pairs(tmp, 8)
    batch = 16 if method == "kto" else 8
    recipe = write_recipe(
        tmp / f"{method}.py",
        f"""
        from quickft import KTO, ORPO, SimPO

        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            method={method!r},
            {SETTINGS[method]},
            data=Data(path={str(pairs)!r}, prompt_template={PROMPT!r}, holdout=0),
            eval=Eval(cases={{"¿Cuánto es 3 + 4?": "7"}}),
            lora=LoRA(r=4, alpha=8, dropout=0.0),
            max_seq_length=64,
            micro_batch_size={batch},
            max_steps=3,
            learning_rate=5e-3,
            max_new_tokens=4,
            backend="peft",
        )
        """,
    )
    out, console = tmp / "run", io.StringIO()
    with contextlib.redirect_stdout(console):  # not a terminal: the reporter writes plain lines
        assert main(["run", str(recipe), "--output-dir", str(out)]) == 0
    return method, out, recipe, pairs, console.getvalue()


def rows_of(run_dir):
    """The training rows of metrics.jsonl (evaluations, and the starting model's score at step 0, left out)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def starting_logps(tiny_model_dir, pairs_path, adapter=None, only=None):
    """Each pair's (prompt, chosen, rejected) ids as quickft tokenizes them, and each answer's summed log-probability
    and token count under the starting model (LoRA's B is zero: the policy before the first update), or under the
    base with a trained `adapter` (a run directory); `only`: the prompts of the pairs to read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quickft.data.pairs import encode_pair, read_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    data = Data(path=str(pairs_path), prompt_template=PROMPT)
    out = []
    for pair in read_pairs(pairs_path, data)[1]:
        if only is not None and pair.prompt not in only:
            continue
        ids = encode_pair(pair, tokenizer, data)
        row = {"tokens": 2 * len(ids["prompt_ids"]) + len(ids["chosen_ids"]) + len(ids["rejected_ids"])}
        for key in ("chosen", "rejected"):
            full = torch.tensor([ids["prompt_ids"] + ids[f"{key}_ids"]])
            with torch.no_grad():
                logps = torch.log_softmax(model(full).logits[0, :-1].float(), -1)
            targets = full[0, 1:]
            answer = slice(len(ids["prompt_ids"]) - 1, None)
            every = logps.gather(-1, targets[:, None])[:, 0]
            row[key] = (every[answer].sum().item(), len(ids[f"{key}_ids"]))
            row[f"{key}_sequence"] = (every.sum().item(), len(every))  # every token after the first
        out.append(row)
    return out


def log1mexp(x: float) -> float:
    return math.log(-math.expm1(x))


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_the_first_steps_figures_are_the_starting_models(method_run, tiny_model_dir):
    """Step 1's batch is the whole data set and the policy is still the starting model: each logged figure is
    recomputed here from the starting model's log-probabilities of quickft's tokens, with each paper's formula."""
    method, run_dir, _, pairs_path, out = method_run
    first = rows_of(run_dir)[0]
    pairs = starting_logps(tiny_model_dir, pairs_path)
    assert first["tokens"] == sum(p["tokens"] for p in pairs)  # every sequence of the step, no padding
    assert first["samples"] == 2 * len(pairs)
    if method == "kto":  # the reference is the starting model: rewards, KL and margin are 0; each loss 1 - σ(0)
        assert first["loss"] == pytest.approx(0.5, abs=1e-6)
        assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6)
        assert first["rewards/rejected"] == pytest.approx(0, abs=1e-6)
        assert first["kl"] == pytest.approx(0, abs=1e-6)
        assert first["logps/chosen"] == pytest.approx(mean(p["chosen"][0] for p in pairs), rel=1e-4)
        assert first["logps/rejected"] == pytest.approx(mean(p["rejected"][0] for p in pairs), rel=1e-4)
        return
    chosen = [p["chosen"][0] / p["chosen"][1] for p in pairs]  # ORPO and SimPO: log-probability per token
    rejected = [p["rejected"][0] / p["rejected"][1] for p in pairs]
    beta = 0.5 if method == "orpo" else 2.0
    assert first["logps/chosen"] == pytest.approx(mean(chosen), rel=1e-4)
    assert first["rewards/chosen"] == pytest.approx(beta * mean(chosen), rel=1e-4)
    assert first["rewards/rejected"] == pytest.approx(beta * mean(rejected), rel=1e-4)
    assert first["rewards/accuracies"] == pytest.approx(mean(c > r for c, r in zip(chosen, rejected, strict=True)))
    if method == "orpo":
        # the chosen sequences' SFT loss (TRL's ORPO: prompt included), minus beta x log σ(the log odds ratio)
        nll = -sum(p["chosen_sequence"][0] for p in pairs) / sum(p["chosen_sequence"][1] for p in pairs)
        odds = [(c - r) - (log1mexp(c) - log1mexp(r)) for c, r in zip(chosen, rejected, strict=True)]
        ratio = mean(logsigmoid(o) for o in odds)
        assert first["nll_loss"] == pytest.approx(nll, rel=1e-4)
        assert first["log_odds_chosen"] == pytest.approx(mean(odds), rel=1e-4)  # the log odds ratio itself
        assert first["log_odds_ratio"] == pytest.approx(ratio, rel=1e-4)  # TRL's name for mean log σ(log odds ratio)
        assert first["loss"] == pytest.approx(nll - beta * ratio, rel=1e-4)
        # printed under their own names: the log odds ratio, and the odds-ratio loss -log σ(it) (ln 2 at no preference)
        line = next(line for line in out.splitlines() if line.startswith("step      1/"))
        shown = float(re.search(r"log odds ratio ([+-]\d+\.\d+)", line)[1])
        assert shown == pytest.approx(mean(odds), abs=5e-4 + 1e-6)
        assert float(re.search(r"odds-ratio loss (\d+\.\d+)", line)[1]) == pytest.approx(-ratio, abs=5e-5 + 1e-7)
    else:  # SimPO: -log σ(beta x (chosen - rejected) - gamma), gamma = 0.5 x beta
        gamma = 0.5 * beta
        loss = mean(-logsigmoid(beta * (c - r) - gamma) for c, r in zip(chosen, rejected, strict=True))
        assert first["loss"] == pytest.approx(loss, rel=1e-4)


def test_each_method_says_what_it_ran_and_prints_what_it_logged(method_run):
    """The header names the trainer and its settings as the trainer holds them; every live line carries its row's
    preference figures, and summary.json the last row's."""
    from quickft.methods.preference import line_text as preference_text

    method, run_dir, _, _, out = method_run
    rows = rows_of(run_dir)
    trainer = {"orpo": "TRL's ORPOTrainer", "simpo": "TRL's CPOTrainer with SimPO's loss", "kto": "TRL's KTOTrainer"}
    flat = " ".join(out.split())
    assert f"method {method} ({trainer[method]}" in flat
    said = {
        "orpo": "ORPO: the chosen sequence's SFT loss (its prompt included, as TRL's ORPO computes it) + 0.5 × the "
        "odds-ratio term",
        "simpo": "SimPO: length-normalized rewards (beta 2), target margin 1;",
        "kto": "KTO (beta 0.1, loss kto, weights 1 desirable / 1 undesirable; KL estimated",
    }
    assert said[method] in flat
    assert len(rows) == 3
    for row in rows:
        assert preference_text(row) in out
    if method == "simpo":  # CPO logs an SFT loss of 0 when it adds none: not shown
        assert rows[-1]["nll_loss"] == 0 and "SFT loss" not in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["preference"]["last"]["rewards/margins"] == rows[-1]["rewards/margins"]
    # each step is the whole data set (one micro-batch): the run's tokens are three times the first step's
    assert summary["train"]["tokens"] == rows[-1]["tokens"] == 3 * rows[0]["tokens"]


def test_the_last_step_is_logged_whatever_logging_steps_says(method_run, tmp_path, capsys):
    """max_steps=3 logging every 2 steps: step 3 is logged too, its figures those of step 3 alone (the fixture's run
    logs every step), the report's last figures are step 3's, and the starting model's score is step 0's row, as
    `quickft eval RUN --base` scores it afterwards."""
    _, run_dir, recipe, _, _ = method_run
    out = tmp_path / "windows"
    assert main(["run", str(recipe), "--output-dir", str(out), "logging_steps=2", "--quiet"]) == 0
    each, windows = rows_of(run_dir), rows_of(out)
    assert [r["step"] for r in windows] == [2, 3] and windows[-1]["window_steps"] == 1
    for key in ("loss", "rewards/chosen", "rewards/rejected"):
        assert windows[-1][key] == pytest.approx(each[2][key], abs=1e-5), key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preference"]["last"]["step"] == 3 and summary["loss"]["final"] == windows[-1]["loss"]
    start = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["step"] == 0]
    assert len(start) == 1 and summary["test_cases"]["before_training"] == start[0]["case_score"]
    capsys.readouterr()
    assert main(["eval", str(out), "--base", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == start[0]["case_score"]


def test_the_adapter_trained_and_the_run_chats(method_run):
    """The adapter moved from its zero start (a LoRA run saves the adapter only) with no frozen reference copy in
    it, the method's own plot is drawn, the held-out case was answered and scored, and chat answers."""
    from safetensors.torch import load_file

    _, run_dir, _, _, _ = method_run
    weights = load_file(run_dir / "adapter_model.safetensors")
    assert all(".ref." not in k for k in weights)
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    import matplotlib.image

    pixels = matplotlib.image.imread(run_dir / "preference.png")  # the method's own curves, drawn
    assert pixels.shape[0] > 100 and pixels.std() > 0.01
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["reference"] for s in samples] == ["7"] and all(isinstance(s["correct"], bool) for s in samples)
    assert main(["chat", str(run_dir), "--prompt", "¿Cuánto es 3 + 4?"]) == 0


def test_ktos_rewards_and_margin_are_means_over_different_micro_batches(tmp_path, tiny_model_dir, capsys):
    """KTO judges answers one at a time: TRL averages a window's desirable reward over the micro-batches holding
    desirable answers, the undesirable one over those holding undesirable ones, and the margin over those holding
    both. Recomputed here from a run that logs every step (one micro-batch each) against one that logs every 4;
    the report says what the margin is, since it need not be the difference of the two rewards shown."""
    pairs = sums_pairs(tmp_path, 8)
    recipe = write_recipe(
        tmp_path / "kto.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            method="kto",
            data=Data(path={str(pairs)!r}, prompt_template={PROMPT!r}, holdout=0),
            lora=LoRA(r=4, alpha=8, dropout=0.0),
            max_seq_length=64,
            micro_batch_size=2,
            max_steps=8,
            learning_rate=5e-3,
            backend="peft",
        )
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "every"), "--quiet"]) == 0
    every = rows_of(tmp_path / "every")
    capsys.readouterr()
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "windows"), "logging_steps=4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    windows = rows_of(tmp_path / "windows")
    one_kind = [r for r in every if "rewards/margins" not in r]
    assert one_kind, "some micro-batch holds one kind of answer: the case under test"
    differs = 0
    for window in windows:
        steps = [r for r in every if window["step"] - 4 < r["step"] <= window["step"]]
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            held = [r[key] for r in steps if key in r]
            assert (key in window) == bool(held)
            if held:
                assert window[key] == pytest.approx(mean(held), abs=1e-5), (window["step"], key)
        if "rewards/margins" in window:
            differs += abs(window["rewards/margins"] - (window["rewards/chosen"] - window["rewards/rejected"])) > 1e-4
    assert differs, "a window's margin is not the difference of its two rewards"
    last = json.loads((tmp_path / "windows" / "summary.json").read_text())["preference"]["last"]
    assert last["window_steps"] == 4
    assert f"steps 5-8: margin {last['rewards/margins']:+.3f} (micro-batches with both kinds)" in out
    assert "(TRL's means over each logging window's micro-batches; KTO's margin over those holding both" in out


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_eval_loss_on_held_out_pairs(method, tmp_path, tiny_model_dir):
    """eval.fraction holds out pairs (KTO: their two answers) by prompt; the last evaluation's loss, on the final
    model, is recomputed here with the method's formula (DPO: against the base, the reference; ORPO: none)."""
    pairs = sums_pairs(tmp_path, 20)
    settings = {"dpo": "dpo=DPO(beta=0.1)", "orpo": "orpo=ORPO(beta=0.5)", "kto": "kto=KTO(beta=0.1)"}[method]
    recipe = write_recipe(
        tmp_path / "r.py",
        f"""
        from quickft import DPO, KTO, ORPO

        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            method={method!r},
            {settings},
            data=Data(path={str(pairs)!r}, prompt_template={PROMPT!r}, holdout=0),
            eval=Eval(every=2, fraction=0.2, patience=5),  # keeps the best adapter in best/; never stops here
            lora=LoRA(r=4, alpha=8, dropout=0.0),
            max_seq_length=64,
            micro_batch_size=8,
            max_steps=4,
            learning_rate=5e-3,
            backend="peft",
        )
        """,
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(out), "--quiet"]) == 0
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(math.isfinite(r["eval_loss"]) for r in evals)
    best = out / "best"  # the trained adapter only, as the run's own save
    assert (best / "adapter_model.safetensors").is_file() and not (best / "ref").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["held_out_eval"] == (8 if method == "kto" else 4)  # 4 of 20 prompts (KTO: 2 answers each)
    if method == "kto":  # its loss leans on a KL estimate from mismatched pairs: checked present, not recomputed
        return
    from quickft.pipeline import read_data
    from quickft.recipe import load_recipe

    _, split = read_data(load_recipe(recipe))  # the same split, from the same data and seed
    held = {p.prompt for p in split.eval}
    assert len(held) == 4 and not held & {p.prompt for p in split.train}
    final = starting_logps(tiny_model_dir, pairs, adapter=out, only=held)
    if method == "dpo":
        base = starting_logps(tiny_model_dir, pairs, only=held)
        losses = [
            -logsigmoid(0.1 * ((f["chosen"][0] - b["chosen"][0]) - (f["rejected"][0] - b["rejected"][0])))
            for f, b in zip(final, base, strict=True)
        ]
        expected = mean(losses)
    else:
        chosen = [p["chosen"][0] / p["chosen"][1] for p in final]
        rejected = [p["rejected"][0] / p["rejected"][1] for p in final]
        nll = -sum(p["chosen_sequence"][0] for p in final) / sum(p["chosen_sequence"][1] for p in final)
        odds = [(c - r) - (log1mexp(c) - log1mexp(r)) for c, r in zip(chosen, rejected, strict=True)]
        expected = nll - 0.5 * mean(logsigmoid(o) for o in odds)
    assert evals[-1]["eval_loss"] == pytest.approx(expected, rel=1e-4)


def test_eval_and_a_merged_export_work_on_the_run(method_run, tmp_path, capsys):
    """quickft eval scores the run's test case again, and the merged export's check (each form loaded back, its
    answers compared with the run's as token ids) passes, as for an SFT run."""
    _, run_dir, _, _, _ = method_run
    check_eval_and_merged_export(run_dir, tmp_path / "m", capsys)


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_stopped_with_ctrl_c_a_lora_run_resumes_to_the_uninterrupted_run(method, tmp_path, tiny_model_dir):
    """A LoRA run whose reference is TRL's frozen copy of the starting adapter, stopped with Ctrl-C and resumed from
    its checkpoint, trains the same steps, on the same batches (KTO's fixed order included), to the same losses as
    one that never stopped: the resumed run goes on from the trained adapter, not from its start (transformers
    loads only a checkpoint's adapter subfolders when it has any, and the copy is one)."""
    import signal
    import time

    pairs = sums_pairs(tmp_path, 40)
    recipe = write_recipe(
        tmp_path / f"{method}.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            method={method!r},
            data=Data(path={str(pairs)!r}, prompt_template={PROMPT!r}, holdout=0),
            lora=LoRA(r=4, alpha=8, dropout=0.0),
            max_seq_length=64,
            micro_batch_size=4,
            max_steps=160,
            learning_rate=3e-3,
            save_every=20,
            backend="peft",
        )
        """,
    )
    reference = tmp_path / "reference"
    assert main(["run", str(recipe), "--output-dir", str(reference), "--quiet"]) == 0
    stopped = tmp_path / "stopped"
    command = [sys.executable, "-m", "quickft", "run", str(recipe), "--output-dir", str(stopped), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((stopped / "metrics.jsonl").is_file() and len(rows_of(stopped)) >= 30):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped_at = json.loads((stopped / "summary.json").read_text())["train"]["steps"]
    assert 30 <= stopped_at < 160
    assert main(["run", str(recipe), "--resume", str(stopped), "--quiet"]) == 0
    rows, ref_rows = rows_of(stopped), rows_of(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(1, 161))
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in ref_rows]  # the same batches, in the same order
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(rows, ref_rows, strict=True)) < 1e-4


@requires_unsloth
def test_unsloths_cpu_mode_trains_the_same_first_steps(method_run, tmp_path):
    """--backend unsloth on a CPU (in a process of its own: importing Unsloth patches TRL): Unsloth's CPU mode runs
    the same first steps of each method as PEFT, to float precision."""
    method, run_dir, recipe, _, _ = method_run
    theirs, ours = unsloth_rows(recipe, tmp_path / "u"), rows_of(run_dir)[:2]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert [r[key] for r in theirs] == pytest.approx([r[key] for r in ours], abs=1e-5), (method, key)


@pytest.mark.parametrize(
    "override, says",
    [
        (["method=kto", "micro_batch_size=1"], "micro_batch_size >= 2"),
        (["method=kto", "data.batching=grouped"], "fixed order"),
        (["method=orpo", "data.train_on_prompt=true"], "method='orpo' compares the answers only"),
        (["method=simpo", "simpo.beta=0"], "simpo.beta: must be > 0"),
        (["method=orpo", "eval.path=missing.jsonl", "eval.every=2"], "missing.jsonl"),
    ],
)
def test_recipe_mistakes_exit_2(method_run, override, says, capsys):
    _, _, recipe, _, _ = method_run
    capsys.readouterr()
    assert main(["run", str(recipe), *override]) == 2
    assert says in " ".join(capsys.readouterr().err.split())
