"""method="grpo": prompts in the shapes the big projects publish, the built-in rewards and the guard around any
reward, and a real GRPO run (TRL's GRPOTrainer on the PEFT path) on the tiny model, through the CLI, whose printed
figures are recomputed from TRL's own logs."""

from __future__ import annotations

import io
import json
import re

import pytest
from conftest import (
    PROMPT,
    SUMS,
    check_eval_and_merged_export,
    requires_unsloth,
    unsloth_rows,
    write_blocks,
    write_recipe,
)
from rich.console import Console

from quickft.cli import main
from quickft.data.tasks import read_tasks
from quickft.errors import UserError
from quickft.recipe import Data
from quickft.rewards import exact_answer, format_match, guarded, length_penalty

# Records shaped as each project publishes them, with text of our own.
GSM8K = {  # openai/gsm8k: the worked answer ends with "#### <final answer>"
    "question": "Natalia vendió 48 clips en abril y la mitad en mayo. ¿Cuántos vendió en total?",
    "answer": "En mayo vendió 48/2 = <<48/2=24>>24 clips.\nEn total 48+24 = <<48+24=72>>72.\n#### 72",
}
MATH = {"problem": "¿Cuánto es $\\frac{1}{2} + \\frac{1}{4}$?", "solution": "Es $\\boxed{\\frac{3}{4}}$.", "level": 2}
MESSAGES_ANSWER = {  # a chat prompt (TRL's conversational prompt-only) with the answer beside it
    "messages": [{"role": "system", "content": "Responde con un número."}, {"role": "user", "content": "3 + 4?"}],
    "answer": "7",
    "source": "es",
}
MESSAGES_ANSWERED = {  # an SFT chat record: its last assistant turn is the reference
    "messages": [{"role": "user", "content": "一加一等于几？"}, {"role": "assistant", "content": "二"}],
}
TRL_PROMPT_ONLY = {"prompt": [{"role": "user", "content": "Write a haiku about rain."}]}
TEXT_PROMPT_ONLY = {"prompt": "Escribe un haiku sobre la lluvia."}
ALPACA = {"instruction": "Suma los números.", "input": "2, 3", "output": "5"}
DOLLY = {"instruction": "Suma los números.", "context": "2, 3", "response": "5", "category": "closed_qa"}
METAMATHQA = {"query": "¿3 * 6?", "response": "3 * 6 = 18\nThe answer is: 18", "type": "GSM_SV"}
MATH_500 = {"problem": "¿$2^3$?", "solution": "$2^3 = \\boxed{8}$", "answer": "8", "level": 1}  # a final answer beside


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "record, shape, prompt, answer, columns",
    [
        (GSM8K, "question/answer", GSM8K["question"], GSM8K["answer"], {}),
        (MATH, "problem/solution", MATH["problem"], MATH["solution"], {"level": 2}),
        (MESSAGES_ANSWER, "messages + answer", MESSAGES_ANSWER["messages"], "7", {"source": "es"}),
        (MESSAGES_ANSWERED, "messages + answer", MESSAGES_ANSWERED["messages"][:1], "二", {}),
        (TRL_PROMPT_ONLY, "prompt + answer", TRL_PROMPT_ONLY["prompt"], None, {}),
        (TEXT_PROMPT_ONLY, "prompt only", TEXT_PROMPT_ONLY["prompt"], None, {}),
        (ALPACA, "alpaca", "Suma los números.\n\n2, 3", "5", {}),
        (DOLLY, "dolly", "Suma los números.\n\n2, 3", "5", {"category": "closed_qa"}),
        (METAMATHQA, "query/response", "¿3 * 6?", METAMATHQA["response"], {"type": "GSM_SV"}),
        (MATH_500, "problem/answer", "¿$2^3$?", "8", {"solution": MATH_500["solution"], "level": 1}),
    ],
)
def test_published_prompt_shapes_read_into_one_task(tmp_path, record, shape, prompt, answer, columns):
    read_shape, tasks, drops = read_tasks(write_jsonl(tmp_path / "d.jsonl", [record]), Data(path="d.jsonl"))
    assert (read_shape, drops) == (shape, [])
    (task,) = tasks
    assert (task.prompt, task.answer, task.columns) == (prompt, answer, columns)
    assert task.where.endswith("d.jsonl:1")


def test_blocks_prompts_carry_their_answer_and_repeats_and_empty_prompts_are_dropped(tmp_path, sums_file):
    _, tasks, _ = read_tasks(sums_file, Data(path=str(sums_file), prompt_template=PROMPT))
    assert (tasks[0].prompt, tasks[0].answer) == ("¿Cuánto es 0 + 0?", "0")
    assert len(tasks) == len(SUMS)
    path = write_jsonl(tmp_path / "d.jsonl", [GSM8K, {"question": "  ", "answer": "1"}, GSM8K])
    _, tasks, drops = read_tasks(path, Data(path=str(path)))
    assert len(tasks) == 1
    assert [(w.rsplit(":", 1)[1], why) for w, why in drops] == [
        ("2", "empty prompt"),
        ("3", "the same prompt as an earlier record"),
    ]


@pytest.mark.parametrize(
    "record, says",
    [
        ({"text": "un documento"}, "no prompt in the record"),
        (
            {
                "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2
                + [{"role": "assistant", "content": "c"}]
            },
            "the conversation must end with a user (or tool) turn",
        ),
        ({"question": "q", "answer": ["a", "b"]}, "'answer' must be text or a number"),
        ({"question": "q", "answer": "a", "response": "r"}, "2 pairs of keys fit these records"),  # as SFT reads it
    ],
)
def test_records_without_a_prompt_to_answer_are_named(tmp_path, record, says):
    with pytest.raises(UserError, match=None) as e:
        read_tasks(write_jsonl(tmp_path / "d.jsonl", [record]), Data(path="d.jsonl"))
    assert says in str(e.value) and "d.jsonl:1" in str(e.value)


def test_exact_answer_scores_as_eval_match_does():
    completions = ["72", "<think>48 + 24</think> 72", "son 72 clips", "#### 71"]
    references = ["72"] * 4
    assert exact_answer()(completions=completions, answer=references) == [1.0, 1.0, 0.0, 0.0]
    assert exact_answer(match="contains")(completions=completions, answer=references) == [1.0, 1.0, 1.0, 0.0]
    # number: final answers against final answers (GSM8K's "#### 72", \boxed{}, <answer>)
    gsm = [GSM8K["answer"]] * 4
    assert exact_answer(match="number")(completions=completions, answer=gsm) == [1.0, 1.0, 1.0, 0.0]
    assert exact_answer()(completions=["7"], answer=[None]) == [None]  # no reference: no opinion
    assert exact_answer(match="number").quickft_spec == "exact_answer(match='number', column='answer')"


def test_format_match_and_length_penalty():
    assert format_match()(completions=["<think>3 + 4</think>\n7", "7", "<think>x</think>"]) == [1.0, 0.0, 0.0]
    assert format_match(r"\d+", name="digits")(completions=[" 42 ", "4 2"]) == [1.0, 0.0]
    # DAPO's soft overlong punishment: 0 up to max - soft tokens, then linear to -1 at max
    penalty = length_penalty(max_tokens=8, soft_tokens=4)
    assert penalty(completions=[""] * 4, completion_ids=[[1] * n for n in (2, 4, 6, 8)]) == [0.0, 0.0, -0.5, -1.0]


def test_the_guard_names_the_reward_and_the_example_that_failed():
    def by_ten(completions, answer, **kwargs):
        return [float(answer_) / float(c) for c, answer_ in zip(completions, answer, strict=True)]

    reward = guarded(by_ten)
    assert reward.__name__ == "by_ten"
    args = dict(prompts=["p"] * 3, completions=["2", "0", "5"], answer=["4", "4", "10"], where=["a:1", "a:2", "a:3"])
    with pytest.raises(UserError) as e:
        reward(**args, trainer_state=None)
    assert "reward by_ten raised ZeroDivisionError: float division by zero on a:2, completion '0'" in str(e.value)
    with pytest.raises(UserError, match="returned 1 rewards for 2 completions"):
        guarded(lambda completions, **kw: [1.0])(prompts=["p"] * 2, completions=["a", "b"])
    with pytest.raises(UserError, match=r"returned 'yes' \(str\) for a:1, completion 'x'"):
        guarded(lambda completions, **kw: ["yes"])(completions=["x"], where=["a:1"])

    def only_completions(completions):  # no **kwargs: given only what it asks for
        return [float(len(c)) for c in completions]

    assert guarded(only_completions)(prompts=["p"], completions=["abc"], answer=["x"], trainer_state=None) == [3.0]


# ---------------------------------------------------------------------------------------------- a real run


def shortest(completions, **kwargs):
    """A reward of the recipe's own: shorter answers score higher."""
    return [-len(c) / 10 for c in completions]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_model_dir, sums_file):
    """A GRPO run on the tiny model (LoRA: the reference is the base with the adapter off): the sums' answers
    rewarded by exact_answer, plus a reward of the recipe's own, weighted. Clocks of our own time each optimizer step
    and TRL's generate calls within it, by step, into clocks.json beside the run."""
    import time

    import transformers
    from trl import GRPOTrainer

    tmp = tmp_path_factory.mktemp("grpo")
    recipe = write_recipe(
        tmp / "grpo.py",
        f"""
        from quickft import GRPO
        from quickft.rewards import exact_answer

        def shortest(completions, **kwargs):
            return [-len(c) / 10 for c in completions]

        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            method="grpo",
            grpo=GRPO(rewards=[exact_answer(), shortest], reward_weights=[1.0, 0.5], num_generations=4, beta=0.05),
            data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=4),
            max_seq_length=48,
            micro_batch_size=8,
            max_steps=4,
            learning_rate=5e-3,
            max_new_tokens=6,
        )
        """,
    )
    clocks, now = {"step_s": {}, "generation_s": {}}, {}

    class StepClock(transformers.TrainerCallback):  # a spy: its own clock around each optimizer step
        def on_step_begin(self, args, state, control, **kwargs):
            now.update(step=state.global_step + 1, began=time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            clocks["step_s"][now["step"]] = time.perf_counter() - now["began"]

    original_generate, original_train = GRPOTrainer._generate, transformers.Trainer.train

    def timed_generate(self, prompts):  # a spy: times TRL's generate call, changes nothing
        began = time.perf_counter()
        try:
            return original_generate(self, prompts)
        finally:
            spent = clocks["generation_s"].get(now["step"], 0.0)
            clocks["generation_s"][now["step"]] = spent + time.perf_counter() - began

    def timed_train(self, *args, **kwargs):
        self.add_callback(StepClock())
        return original_train(self, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(GRPOTrainer, "_generate", timed_generate)
    mp.setattr(transformers.Trainer, "train", timed_train)
    out = tmp / "run"
    try:
        assert main(["run", str(recipe), "--output-dir", str(out), "--quiet"]) == 0
    finally:
        mp.undo()
    (tmp / "clocks.json").write_text(json.dumps(clocks))
    return out, recipe


def rows_of(run_dir):
    """The training rows of metrics.jsonl (evaluations, and the starting model's score at step 0, left out)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_grpo_logs_each_reward_and_the_weighted_total(grpo_run):
    """Each row holds TRL's per-function means; the reward is their weighted sum (every completion gets both)."""
    run_dir, _ = grpo_run
    rows = [r for r in rows_of(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        total = r["rewards/exact_answer/mean"] + 0.5 * r["rewards/shortest/mean"]
        assert r["reward"] == pytest.approx(total, abs=1e-5)
        assert 0 <= r["frac_reward_zero_std"] <= 1 and r["kl"] is not None  # beta > 0: KL is measured
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # before any update the policy is the reference
    assert not (run_dir / "ref").exists()


def test_grpo_counts_generated_and_trained_tokens_as_trl_logs_them(grpo_run):
    """Each step generates one batch (8 answers, 2 prompts x 4): the generated tokens are TRL's mean completion
    length x 8; the trained tokens are those plus each prompt's tokens once per answer. The generation figures are
    recomputed from our own clocks (clocks.json): a step's generation share is the time inside TRL's generate calls
    over the step's time, the rate while generating those tokens over that time."""
    run_dir, _ = grpo_run
    clocks = {
        k: {int(step): s for step, s in v.items()}
        for k, v in json.loads(run_dir.with_name("clocks.json").read_text()).items()
    }
    rows = [r for r in rows_of(run_dir) if "loss" in r]
    previous = {"generated_tokens": 0, "tokens": 0, "samples": 0}
    prompt_lengths = {len(PROMPT.format(prompt=f"¿Cuánto es {a} + {b}?")) for a, b in SUMS}  # characters >= tokens
    generated_by_trl = 0.0
    for r in rows:
        generated = r["generated_tokens"] - previous["generated_tokens"]
        samples = r["samples"] - previous["samples"]
        assert samples == 8
        assert generated == pytest.approx(r["completions/mean_length"] * 8, abs=1e-6)
        generated_by_trl += r["completions/mean_length"] * 8
        prompt_tokens = r["tokens"] - previous["tokens"] - generated
        assert prompt_tokens % 4 == 0 and 0 < prompt_tokens <= 8 * max(prompt_lengths)
        step, generation_s = clocks["step_s"][r["step"]], clocks["generation_s"][r["step"]]
        assert r["window_s"] == pytest.approx(step, rel=0.05)
        assert r["generation_share"] == pytest.approx(generation_s / step, rel=0.05)
        assert r["generated_tokens_per_s"] == pytest.approx(r["completions/mean_length"] * 8 / generation_s, rel=0.05)
        assert 0 < r["generation_share"] < 1
        previous = r
    summary = json.loads((run_dir / "summary.json").read_text())
    g = summary["grpo"]
    assert g["generated_tokens"] == rows[-1]["generated_tokens"] == g["session_generated_tokens"] == generated_by_trl
    steps_s, generation_s = sum(clocks["step_s"].values()), sum(clocks["generation_s"].values())
    assert g["generation_s"] == pytest.approx(generation_s, rel=0.05)
    assert g["generation_share"] == pytest.approx(generation_s / steps_s, rel=0.05)
    assert g["generated_tokens_per_s"] == pytest.approx(generated_by_trl / generation_s, rel=0.05)
    assert summary["train"]["tokens"] == rows[-1]["tokens"] and summary["train"]["samples"] == 4 * 8
    keys = set(g["last"])
    assert {"reward", "rewards/exact_answer/mean", "rewards/shortest/std", "frac_reward_zero_std", "kl"} <= keys
    assert g["last"] == {k: rows[-1][k] for k in keys} and g["first"] == {k: rows[0][k] for k in keys}


def test_grpo_says_what_it_runs_and_reports_where_the_time_went(grpo_run, capsys):
    run_dir, recipe = grpo_run
    assert main(["run", str(recipe), "--output-dir", str(run_dir.parent / "again"), "max_steps=1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    summary = json.loads((run_dir.parent / "again" / "summary.json").read_text())
    g = summary["grpo"]
    assert "method grpo (TRL's GRPOTrainer)" in out
    assert "GRPO: 4 answers per prompt (temperature 1, up to 6 tokens), loss dapo, clip 0.2" in out
    assert "GRPO's reward: exact_answer(match='exact', column='answer') + 0.5 × shortest" in out
    # TRL copies the starting adapter as the reference: the base with an adapter that is still zero
    assert "GRPO's KL term (beta 0.05) against a reference model: the base with LoRA's starting adapter" in out
    assert f"{len(SUMS) - 4:,} prompts (4 answers generated for each in training)" in out
    assert "8 micro-batch × 1 accumulation = 8 effective (2 prompts × 4 answers)" in out
    assert f"{g['generated_tokens']:,} tokens generated ({g['generated_tokens_per_s']:,.0f} tokens/s" in out
    assert f"= {g['generation_share']:.0%} of training steps' time" in out
    assert f"reward {g['last']['reward']:.3f} ± {g['last']['reward_std']:.3f}" in out
    assert "GRPO's objective" in out and "improvement by third" not in out
    import matplotlib.image

    for name in ("rewards.png", "groups.png"):
        pixels = matplotlib.image.imread(run_dir / name)
        assert pixels.shape[0] > 100 and pixels.std() > 0.01, f"{name} is blank"
    assert not (run_dir / "loss_log.png").exists()  # GRPO's objective crosses 0: no log scale


def test_the_last_grpo_step_is_logged_whatever_logging_steps_says(grpo_run, tmp_path):
    """max_steps=4 logging every 3 steps: step 4 is logged too, its figures those of step 4 alone (the fixture's run
    logs every step, from the same seed), and the report's last figures are step 4's."""
    run_dir, recipe = grpo_run
    out = tmp_path / "windows"
    assert main(["run", str(recipe), "--output-dir", str(out), "logging_steps=3", "--quiet"]) == 0
    each, windows = rows_of(run_dir), rows_of(out)
    assert [r["step"] for r in windows] == [3, 4] and windows[-1]["window_steps"] == 1
    for key in ("loss", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length"):
        assert windows[-1][key] == pytest.approx(each[3][key], abs=1e-5), key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grpo"]["last"]["step"] == 4 and summary["grpo"]["last"]["reward"] == windows[-1]["reward"]
    assert summary["loss"]["final"] == windows[-1]["loss"]


def test_the_starting_models_score_is_beside_the_end_score(grpo_run, capsys):
    """GRPO starts from a trained model: its test-case score is taken before the first step (metrics.jsonl's step 0)
    and the report sets the end score beside it. It is the score `quickft eval RUN --base` gives afterwards: the
    model the run started from, loaded and answered on its own."""
    from quickft.report import Reporter

    run_dir, _ = grpo_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start = [r for r in rows if r["step"] == 0]
    assert rows[0] == start[0] and len(start) == 1, "the first row, before any training row"
    summary = json.loads((run_dir / "summary.json").read_text())
    h = summary["test_cases"]
    assert h["before_training"] == start[0]["case_score"]
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--base", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == h["before_training"]
    console = Console(record=True, width=200, file=io.StringIO())
    Reporter(console).report(summary, [])
    shown = " ".join(console.export_text().split())
    assert (
        f"{h['score']:.1%} ({h['correct']}/{h['n']}), from {h['before_training']:.1%} before training "
        f"({100 * (h['score'] - h['before_training']):+.1f} points)" in shown
    )


def test_compare_with_an_sft_run_says_what_cannot_be_compared(grpo_run, tmp_path, tiny_model_dir, sums_file, capsys):
    """GRPO's trainer makes no FLOPs estimate and its loss is an objective around 0: beside an SFT run, compare says
    "n/a" for both, never a ratio of a GRPO objective to an SFT loss, nor 0 FLOPs; the test-case scores compare."""
    run_dir, _ = grpo_run
    sft = write_recipe(
        tmp_path / "sft.py",
        f"""
        recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r},
                        holdout=4), lora=LoRA(r=4, alpha=8), max_seq_length=32, micro_batch_size=8, max_steps=2,
                        max_new_tokens=6)
        """,
    )
    assert main(["run", str(sft), "--output-dir", str(tmp_path / "sft"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "sft"), str(run_dir), "--json"]) == 0
    first, grpo = json.loads(capsys.readouterr().out)
    assert (first["method"], grpo["method"]) == ("sft", "grpo")
    assert grpo["total_flos"] is None and grpo["ratios"]["total_flos"]["text"].startswith("n/a")
    for key in ("final_loss", "min_loss"):
        assert grpo["ratios"][key] == {"ratio": None, "text": "n/a (GRPO loss vs SFT loss: different quantities)"}
    assert grpo["ratios"]["case_score"]["text"].endswith(" points") or grpo["ratios"]["case_score"]["text"] == "same"
    assert main(["compare", str(tmp_path / "sft"), str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert "0.000e+00" not in table and "-0.00×" not in table and not re.search(r"1\.0× (less|more)", table)
    assert re.search(r"total FLOPs\s*│\s*\S+\s*│\s*n/a", table)
    assert "different methods (sft, grpo)" in " ".join(table.split())


def test_a_grpo_run_chats_and_scores_its_test_cases(grpo_run):
    run_dir, _ = grpo_run
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["reference"].isdigit() for s in samples)  # held-out sums with answers
    assert main(["chat", str(run_dir), "--prompt", "¿Cuánto es 2 + 3?"]) == 0
    saved = json.loads((run_dir / "recipe.json").read_text())["grpo"]
    assert saved["rewards"] == ["exact_answer(match='exact', column='answer')", "shortest"]


def test_a_grpo_run_evaluates_and_exports_merged(grpo_run, tmp_path, capsys):
    """quickft eval answers the run's test cases as the run did, and the merged export's check passes."""
    run_dir, _ = grpo_run
    check_eval_and_merged_export(run_dir, tmp_path / "m", capsys)


def test_a_reward_that_raises_is_exit_2_naming_it_and_the_example(tmp_path, tiny_model_dir, capsys):
    data = write_blocks(tmp_path / "sums.txt", SUMS[:40])
    recipe = write_recipe(
        tmp_path / "r.py",
        f"""
        from quickft import GRPO

        def picky(completions, answer, where, **kwargs):
            return [1 / 0 if w.endswith(":7") else 0.0 for w in where]

        recipe = Recipe(
            model={str(tiny_model_dir)!r}, method="grpo", grpo=GRPO(rewards=[picky], num_generations=2),
            data=Data(path={str(data)!r}, prompt_template={PROMPT!r}, holdout=0), micro_batch_size=80,
            max_steps=1, max_new_tokens=2, max_seq_length=48,
        )
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"reward picky raised ZeroDivisionError: division by zero on {data}:7" in err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_grpo_recipe_mistakes_exit_2(tmp_path, tiny_model_dir, sums_file, capsys):
    body = f"""
        from quickft import GRPO
        from quickft.rewards import exact_answer

        def needs_solution(completions, solution):
            return [0.0 for _ in completions]

        recipe = Recipe(model={str(tiny_model_dir)!r}, method="grpo", data=Data(path={str(sums_file)!r}), max_seq_length=48,
                        {{extra}})
        """
    for extra, says in (
        ("grpo=GRPO()", "grpo.rewards: method='grpo' needs at least one reward function"),
        (
            "grpo=GRPO(rewards=[exact_answer()], num_generations=3), micro_batch_size=4",
            "(4 x 1) answers per step must be a multiple of grpo.num_generations (3)",
        ),
        ("grpo=GRPO(rewards=[exact_answer(), exact_answer()])", "two rewards share a name"),
        ("grpo=GRPO(rewards=[exact_answer()], reward_weights=[1.0, 2.0])", "2 weight(s) for 1 reward(s)"),
        ("grpo=GRPO(rewards=[exact_answer()]), eval=Eval(every=1, fraction=0.1)", "eval loss is not computed"),
        (
            "grpo=GRPO(rewards=[needs_solution], num_generations=2), micro_batch_size=2",
            "reward needs_solution: its argument 'solution' is not something a reward is given",
        ),
    ):
        recipe = write_recipe(tmp_path / "r.py", body.replace("{extra}", extra))
        assert main(["run", str(recipe), "--output-dir", str(tmp_path / "never")]) == 2, extra
        assert says in " ".join(capsys.readouterr().err.split()), extra
        assert not (tmp_path / "never").exists()


def test_answers_cut_and_left_out_of_the_loss_are_still_generated_and_read(tmp_path, tiny_model_dir, sums_file, capsys):
    """grpo.mask_truncated_completions (DAPO's overlong filtering) takes an answer cut at max_completion_length out of
    the loss by zeroing its completion mask; the answer was still generated, scored and read by the step's passes.
    The counts agree with TRL's own logs (a checkpoint's trainer_state.json): its completion lengths (the answers as
    sampled) and num_tokens (prompts and answers as the passes read them). Before, a cut answer counted as neither."""
    recipe = write_recipe(
        tmp_path / "r.py",
        f"""
        from quickft import GRPO
        from quickft.rewards import exact_answer

        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            method="grpo",
            grpo=GRPO(rewards=[exact_answer()], num_generations=4, mask_truncated_completions=True),
            data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=0),
            max_seq_length=48,
            micro_batch_size=8,
            max_steps=2,
            save_every=2,
            max_new_tokens=3,
        )
        """,
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 0
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    trl = {e["step"]: e for e in state["log_history"] if "loss" in e}
    rows = [r for r in rows_of(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] == sorted(trl)
    assert all(trl[s]["completions/clipped_ratio"] > 0 for s in trl)  # answers were cut: the case under test
    generated = 0
    for row in rows:
        step = trl[row["step"]]
        assert row["generated_tokens"] - generated == pytest.approx(8 * step["completions/mean_length"], abs=1e-6)
        assert row["tokens"] == step["num_tokens"]
        generated = row["generated_tokens"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grpo"]["generated_tokens"] == generated and summary["train"]["tokens"] == rows[-1]["tokens"]
    assert "loss dapo, clip 0.2; an answer cut at the limit adds nothing to the loss" in " ".join(
        capsys.readouterr().out.split()
    )


@requires_unsloth
def test_unsloths_cpu_mode_trains_the_same_first_grpo_step(grpo_run, tmp_path):
    """--backend unsloth on a CPU, in a process of its own (importing Unsloth patches TRL's GRPOTrainer): the same
    seeded answers, rewards, tokens and updates as PEFT's first two steps, to float precision."""
    run_dir, recipe = grpo_run
    theirs, ours = unsloth_rows(recipe, tmp_path / "u"), rows_of(run_dir)[:2]
    for key in ("loss", "reward", "kl", "grad_norm", "tokens", "generated_tokens", "completions/mean_length"):
        assert [r[key] for r in theirs] == pytest.approx([r[key] for r in ours], abs=1e-5), key


def test_quickft_data_counts_a_grpo_recipes_prompts(grpo_run, tiny_model_dir, capsys):
    """`quickft data` on a GRPO recipe: the prompts' tokens recounted with the tokenizer, and a max_seq_length advice
    that leaves room for the answer."""
    from transformers import AutoTokenizer

    _, recipe = grpo_run
    assert main(["data", str(recipe), "--json", "data.holdout=0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "grpo" and report["lengths_of"] == "prompts"
    assert report["counts"]["kept_for_training"] == report["counts"]["rows"] == len(SUMS)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(tokenizer(PROMPT.format(prompt=f"¿Cuánto es {a} + {b}?"))["input_ids"]) for a, b in SUMS]
    assert report["tokens"]["total"] == sum(lengths) and report["tokens"]["max"] == max(lengths)
    assert report["answer_room"] == 6
    assert report["recommended_max_seq_length"] == 8 * -(-(report["tokens"]["p99"] + 6) // 8)


@requires_unsloth
def test_bench_times_grpo_on_both_backends(grpo_run, tmp_path, capsys):
    """quickft bench on a GRPO recipe: a PEFT and an Unsloth worker process; the tokens it times are the trained
    sequences (each prompt once per answer, plus the answer), counted as the run counts them."""
    _, recipe = grpo_run
    out = tmp_path / "bench"
    args = ["bench", str(recipe), "--backends", "peft,unsloth", "--steps", "1", "--warmup", "1", "--repeat", "1"]
    assert main([*args, "--output-dir", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    peft, unsloth = result["rows"]
    assert "error" not in peft and "error" not in unsloth, result["rows"]
    assert "unsloth" in unsloth["imported"] and "unsloth" not in peft["imported"]
    for row in (peft, unsloth):
        assert row["samples"] == 8  # one timed step: 2 prompts x 4 answers, each a trained sequence
        assert row["settings"]["loss_type"] == "dapo" and row["settings"]["nan_inf_filter"] is True
    assert "method grpo: tokens/s counts the sequences trained" in " ".join(capsys.readouterr().out.split())
