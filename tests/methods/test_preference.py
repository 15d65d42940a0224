"""method="dpo": preference pairs in the shapes the big projects publish, their tokens, and a real DPO run (TRL's
DPOTrainer on the PEFT path) on the tiny model, through the CLI."""

from __future__ import annotations

import io
import json
import math
import random

import pytest
from conftest import PROMPT, SUMS, check_eval_and_merged_export, requires_unsloth, unsloth_rows, write_recipe

from quickft.cli import main
from quickft.data.pairs import Pair, encode_pair, read_pairs
from quickft.errors import UserError
from quickft.methods.preference import KEYS as PREFERENCE_KEYS
from quickft.recipe import Data

# Records shaped as each project publishes them (field names, nesting, and where the prompt lives), with text of
# our own, in Spanish, Chinese and English.
TRL_TEXT = {"prompt": "El cielo es", "chosen": " azul.", "rejected": " verde."}
TRL_CONVERSATIONAL = {  # trl-lib/ultrafeedback_binarized: explicit prompt, one assistant message each
    "prompt": [{"role": "user", "content": "天空是什么颜色的？"}],
    "chosen": [{"role": "assistant", "content": "蓝色。"}],
    "rejected": [{"role": "assistant", "content": "绿色。"}],
}
ULTRAFEEDBACK = {  # HuggingFaceH4/ultrafeedback_binarized: the prompt as text, and again at the head of both lists
    "prompt": "What is 2 + 2?",
    "prompt_id": "0f1e",
    "chosen": [{"content": "What is 2 + 2?", "role": "user"}, {"content": "4", "role": "assistant"}],
    "rejected": [{"content": "What is 2 + 2?", "role": "user"}, {"content": "5", "role": "assistant"}],
    "messages": [{"content": "What is 2 + 2?", "role": "user"}, {"content": "4", "role": "assistant"}],
    "score_chosen": 9.0,
    "score_rejected": 2.0,
}
HH = {  # Anthropic/hh-rlhf: two whole transcripts that differ in the last Assistant turn
    "chosen": "\n\nHuman: Hola, ¿cómo estás?\n\nAssistant: Bien, ¿y tú?\n\nHuman: ¿Cuánto es 3 + 4?\n\nAssistant: 7.",
    "rejected": "\n\nHuman: Hola, ¿cómo estás?\n\nAssistant: Bien, ¿y tú?\n\nHuman: ¿Cuánto es 3 + 4?\n\nAssistant: 8.",
}
LLAMA_FACTORY = {  # LLaMA-Factory's data/dpo_en_demo.json (ShareGPT): conversations, then one turn each
    "conversations": [{"from": "system", "value": "Eres conciso."}, {"from": "human", "value": "¿Capital de Perú?"}],
    "chosen": {"from": "gpt", "value": "Lima."},
    "rejected": {"from": "gpt", "value": "Cusco."},
}
CONTENT_PARTS = {  # chosen_messages / rejected_messages with OpenAI content parts
    "chosen_messages": [
        {"role": "user", "content": [{"type": "text", "text": "Name a prime."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "7"}]},
    ],
    "rejected_messages": [
        {"role": "user", "content": [{"type": "text", "text": "Name a prime."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "9"}]},
    ],
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "record, shape, prompt, chosen, rejected",
    [
        (TRL_TEXT, "prompt/chosen/rejected text", "El cielo es", " azul.", " verde."),
        (
            TRL_CONVERSATIONAL,
            "prompt + chosen/rejected messages",
            [{"role": "user", "content": "天空是什么颜色的？"}],
            {"role": "assistant", "content": "蓝色。"},
            {"role": "assistant", "content": "绿色。"},
        ),
        (
            ULTRAFEEDBACK,
            "chosen/rejected messages",
            [{"role": "user", "content": "What is 2 + 2?"}],
            {"role": "assistant", "content": "4"},
            {"role": "assistant", "content": "5"},
        ),
        (
            HH,
            "hh transcripts",
            [
                {"role": "user", "content": "Hola, ¿cómo estás?"},
                {"role": "assistant", "content": "Bien, ¿y tú?"},
                {"role": "user", "content": "¿Cuánto es 3 + 4?"},
            ],
            {"role": "assistant", "content": "7."},
            {"role": "assistant", "content": "8."},
        ),
        (
            LLAMA_FACTORY,
            "sharegpt",
            [{"role": "system", "content": "Eres conciso."}, {"role": "user", "content": "¿Capital de Perú?"}],
            {"role": "assistant", "content": "Lima."},
            {"role": "assistant", "content": "Cusco."},
        ),
        (
            CONTENT_PARTS,
            "chosen/rejected messages",
            [{"role": "user", "content": "Name a prime."}],
            {"role": "assistant", "content": "7"},
            {"role": "assistant", "content": "9"},
        ),
    ],
)
def test_published_preference_shapes_read_into_one_pair(tmp_path, record, shape, prompt, chosen, rejected):
    path = write_jsonl(tmp_path / "pairs.jsonl", [record])
    read_shape, pairs, drops = read_pairs(path, Data(path=str(path)))
    assert (read_shape, drops) == (shape, [])
    assert pairs == [Pair(prompt, chosen, rejected, f"{path}:1")]


def test_a_pair_with_one_answer_twice_is_dropped_with_its_place_and_a_file_of_them_is_an_error(tmp_path):
    same = {"prompt": "¿2 + 2?", "chosen": "4", "rejected": "4"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [TRL_TEXT, same, TRL_TEXT])
    _, pairs, drops = read_pairs(path, Data(path=str(path)))
    assert len(pairs) == 2 and drops == [(f"{path}:2", "chosen and rejected are the same answer")]
    only = write_jsonl(tmp_path / "same.jsonl", [same, same])
    with pytest.raises(UserError, match="no preference pair left: all 2 have the same chosen and rejected answer"):
        read_pairs(only, Data(path=str(only)))


@pytest.mark.parametrize(
    "record, says",
    [
        ({"instruction": "x", "output": "y"}, "not preference data: no chosen/rejected answers"),
        ({"chosen": "4", "rejected": "5"}, "a text preference pair without a 'prompt'"),
        ({"prompt": "x", "chosen": "4", "rejected": [{"role": "assistant", "content": "5"}]}, "both be text or"),
        (
            {"chosen": HH["chosen"], "rejected": HH["rejected"].replace("Hola", "Adiós")},
            "the chosen and rejected transcripts differ before their last Assistant turn",
        ),
        (
            {"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]},
            "'chosen' must be one assistant answer after the prompt, not user",
        ),
    ],
)
def test_records_that_are_not_pairs_are_named(tmp_path, record, says):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(UserError, match=f"^{path}:1: " + ".*" + says.replace("(", r"\(").replace(")", r"\)")):
        read_pairs(path, Data(path=str(path)))


@pytest.fixture(scope="module")
def chatml_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    from quickft.data.chat_template import CHATML

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHATML
    return tok


def test_a_chat_pairs_tokens_are_the_chat_templates(chatml_tokenizer, tmp_path):
    """prompt + answer is apply_chat_template(tokenize=True) of the conversation, split where the generation prompt
    ends; both answers share the prompt's tokens."""
    path = write_jsonl(tmp_path / "pairs.jsonl", [HH])
    pair = read_pairs(path, Data(path=str(path)))[1][0]
    ids = encode_pair(pair, chatml_tokenizer, Data(path=str(path)))
    prompt = chatml_tokenizer.apply_chat_template(
        pair.prompt, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    for key, answer in (("chosen_ids", pair.chosen), ("rejected_ids", pair.rejected)):
        whole = chatml_tokenizer.apply_chat_template(pair.prompt + [answer], tokenize=True, return_dict=False)
        assert ids["prompt_ids"] == prompt and ids["prompt_ids"] + ids[key] == whole
    assert chatml_tokenizer.decode(ids["chosen_ids"]) == "7.<|im_end|>\n"


def test_a_text_pairs_tokens_are_sfts(tiny_model_dir, tmp_path):
    """The prompt template, then the answer and EOS: SFT's encoder's tokens for the same prompt and answer."""
    from transformers import AutoTokenizer

    from quickft.data import Example
    from quickft.data.encode import encode

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = Data(path="x", prompt_template=PROMPT)
    pair = Pair("¿Cuánto es 3 + 4?", "7", "8", "x:1")
    ids = encode_pair(pair, tok, data)
    row = encode(Example(prompt=pair.prompt, response="7"), tok, data)[0]
    assert ids["prompt_ids"] + ids["chosen_ids"] == row["input_ids"]
    assert ids["chosen_ids"][-1] == tok.eos_token_id and tok.decode(ids["rejected_ids"][:-1]) == "8"


# ---------------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir):
    """A DPO run on the tiny model: right sums chosen, wrong ones rejected."""
    tmp = tmp_path_factory.mktemp("dpo")
    rng = random.Random(0)
    pairs = write_jsonl(
        tmp / "pairs.jsonl",
        [
            {"prompt": f"¿Cuánto es {a} + {b}?", "chosen": str(a + b), "rejected": str(a + b + rng.choice([-1, 1, 10]))}
            for a, b in SUMS
        ],
    )
    recipe = write_recipe(
        tmp / "dpo.py",
        f"""
        from quickft import DPO

        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            method="dpo",
            dpo=DPO(beta=0.1),
            data=Data(path={str(pairs)!r}, prompt_template={PROMPT!r}, holdout=4),
            max_seq_length=64,
            micro_batch_size=8,
            max_steps=6,
            learning_rate=5e-3,
            max_new_tokens=4,
        )
        """,
    )
    out = tmp / "run"
    assert main(["run", str(recipe), "--output-dir", str(out), "--quiet"]) == 0
    return out, recipe


def rows_of(run_dir):
    """The training rows of metrics.jsonl (evaluations, and the starting model's score at step 0, left out)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_dpo_trains_against_the_starting_model(dpo_run):
    """The reference is the base with LoRA's starting adapter: at the first step, before any update, the policy is
    the reference, so both rewards (beta x the log-probability ratio) are 0 and the loss is ln 2."""
    run_dir, _ = dpo_run
    rows = rows_of(run_dir)
    first = rows[0]
    assert first["step"] == 1
    assert abs(first["rewards/chosen"]) < 1e-6 and abs(first["rewards/rejected"]) < 1e-6
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    later = rows[-1]
    assert later["rewards/chosen"] != 0.0  # and then the adapter moved away from it
    assert later["rewards/margins"] == pytest.approx(later["rewards/chosen"] - later["rewards/rejected"], abs=1e-5)
    assert not (run_dir / "ref").exists(), "the frozen starting adapter is not part of the run"


def test_dpo_reports_what_it_measured(dpo_run, capsys):
    """The header says what the reference costs; the report's preference line is metrics.jsonl's first and last
    logged rows; samples are sequences, two per pair, and tokens are each batch's non-padding tokens."""
    run_dir, recipe = dpo_run
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = rows_of(run_dir)
    keys = ("step", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
    first, last = ({k: row[k] for k in PREFERENCE_KEYS if k in row} for row in (rows[0], rows[-1]))
    assert set(keys) <= set(first)
    assert summary["preference"] == {"method": "dpo", "first": first, "last": last}
    assert summary["train"]["samples"] == 6 * 8 * 2  # 6 steps of 8 pairs, a chosen and a rejected sequence each
    assert summary["model"]["method"] == "dpo"
    assert main(["run", str(recipe), "--output-dir", str(run_dir.parent / "again"), "max_steps=1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "DPO (beta 0.1, loss sigmoid) against a reference model: the base with LoRA's starting adapter" in out
    assert "no second model in memory" in out and "method dpo (TRL's DPOTrainer)" in out
    assert "296 preference pairs" in out and "sequences (each pair's chosen and rejected)" in out
    # step 1 is before any update: every reward is 0 (test_dpo_trains_against_the_starting_model) and TRL counts the
    # ties as the chosen answer losing; that is said, not shown as "chosen wins 0%"
    assert "rewards 0: the policy is still the reference model (no preference measured yet)" in out
    assert "step 1: rewards 0: the policy is still the reference model" in out and "chosen wins 0%" not in out


def test_preference_figures_are_trls_means_over_each_logging_window(dpo_run, capsys):
    """A row's (and the report's) preference figures are TRL's means over the steps since its previous log, one
    micro-batch per step here: recomputed from the same run logged every step, and the report names the steps."""
    from quickft.methods.preference import line_text as preference_text

    run_dir, recipe = dpo_run
    every = rows_of(run_dir)
    assert main(["run", str(recipe), "--output-dir", str(run_dir.parent / "windows"), "logging_steps=3"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    windows = rows_of(run_dir.parent / "windows")
    assert [w["step"] for w in windows] == [3, 6] and all(w["window_steps"] == 3 for w in windows)
    for window in windows:
        steps = [r for r in every if window["step"] - 3 < r["step"] <= window["step"]]
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert window[key] == pytest.approx(mean(r[key] for r in steps), abs=1e-5), (window["step"], key)
    first, last = windows
    assert f"steps 4-6: {preference_text(last)}; steps 1-3: chosen wins {first['rewards/accuracies']:.0%}" in out


def test_the_last_dpo_step_is_logged_and_the_start_scored(dpo_run, tmp_path, capsys):
    """max_steps=6 logging every 4 steps: step 6 is logged too, its figures TRL's means over steps 5-6 (recomputed
    from the fixture's run, which logs every step). The starting model's test-case score is metrics.jsonl's step 0,
    the score `quickft eval RUN --base` gives afterwards, and the report sets the end score beside it."""
    from rich.console import Console

    from quickft.report import Reporter

    run_dir, recipe = dpo_run
    out = run_dir.parent / "last_step"
    assert main(["run", str(recipe), "--output-dir", str(out), "logging_steps=4", "--quiet"]) == 0
    every, windows = rows_of(run_dir), rows_of(out)
    assert [r["step"] for r in windows] == [4, 6] and windows[-1]["window_steps"] == 2
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert windows[-1][key] == pytest.approx(mean(r[key] for r in every[4:6]), abs=1e-5), key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preference"]["last"]["step"] == 6 and summary["loss"]["final"] == windows[-1]["loss"]
    start = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["step"] == 0]
    h = summary["test_cases"]
    assert len(start) == 1 and h["before_training"] == start[0]["case_score"]
    capsys.readouterr()
    assert main(["eval", str(out), "--base", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == h["before_training"]
    console = Console(record=True, width=200, file=io.StringIO())
    Reporter(console).report(summary, [])
    assert f", from {h['before_training']:.1%} before training (" in console.export_text()


def test_a_dpo_run_chats_and_scores_its_test_cases(dpo_run, capsys):
    run_dir, _ = dpo_run
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["reference"].isdigit() for s in samples)  # the held-out pairs' chosen answers
    assert main(["chat", str(run_dir), "--prompt", "¿Cuánto es 2 + 3?"]) == 0


def test_a_dpo_run_evaluates_and_exports_merged(dpo_run, tmp_path, capsys):
    """quickft eval answers the run's test cases as the run did, and the merged export's check passes."""
    run_dir, _ = dpo_run
    check_eval_and_merged_export(run_dir, tmp_path / "m", capsys)


def test_dpo_recipe_mistakes_exit_2(tmp_path, tiny_model_dir, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [TRL_TEXT] * 20)
    for holdout, extra, says in (
        (0, ", max_seq_length=3", "no preference pair fits max_seq_length=3"),
        # 20 pairs of one prompt: the held-out cases take every pair of their prompt with them
        (2, "", "nothing left to train on after holding out 2 test case(s): every record shares a prompt"),
    ):
        data = f"Data(path={str(pairs)!r}, holdout={holdout})"
        body = f"""
            recipe = Recipe(model={str(tiny_model_dir)!r}, method="dpo", data={data}{extra})
            """
        recipe = write_recipe(tmp_path / "r.py", body)
        assert main(["run", str(recipe), "--output-dir", str(tmp_path / "never")]) == 2
        assert says in " ".join(capsys.readouterr().err.split())
        assert not (tmp_path / "never").exists()


@requires_unsloth
def test_unsloths_cpu_mode_trains_the_same_first_dpo_steps(dpo_run, tmp_path):
    """--backend unsloth on a CPU: Unsloth's CPU mode (in a process of its own: importing it patches TRL) runs the
    same DPO steps as PEFT, to float precision."""
    run_dir, recipe = dpo_run
    theirs, ours = unsloth_rows(recipe, tmp_path / "u"), rows_of(run_dir)[:2]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        assert [r[key] for r in theirs] == pytest.approx([r[key] for r in ours], abs=1e-5), key


def test_rpo_adds_the_chosen_answers_sft_loss(dpo_run, capsys):
    """dpo.sft_weight adds TRL's "sft" loss to the preference loss, with its weight, as the trainer says it runs."""
    run_dir, recipe = dpo_run
    args = ["run", str(recipe), "--output-dir", str(run_dir.parent / "rpo"), "max_steps=1", "dpo.sft_weight=0.5"]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "DPO (beta 0.1, loss sigmoid + 0.5 × the chosen answer's SFT loss) against a reference model" in out


@requires_unsloth
def test_bench_times_dpo_on_both_backends_like_for_like(dpo_run, tmp_path, capsys):
    """quickft bench on a DPO recipe: a PEFT and an Unsloth worker process, each with the like-for-like settings
    that a DPO config has, read back from each live trainer; tokens/s counts both sequences of each pair."""
    _, recipe = dpo_run
    out = tmp_path / "bench"
    args = ["bench", str(recipe), "--backends", "peft,unsloth", "--steps", "2", "--warmup", "1", "--repeat", "1"]
    assert main([*args, "--output-dir", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["method"] == "dpo" and "chosen and rejected" in result["tokens_counted"]
    peft, unsloth = result["rows"]
    assert "error" not in peft and "error" not in unsloth, result["rows"]
    assert "unsloth" in unsloth["imported"] and "unsloth" not in peft["imported"]
    for row in (peft, unsloth):
        assert row["settings"]["padding_free"] is False and row["settings"]["nan_inf_filter"] is True
        assert row["settings"]["loss_type"] == ["sigmoid"]  # DPO's own loss, never SFT's "nll"
        assert row["samples"] == 16 * 2  # 2 timed steps of 8 pairs: 16 sequences each
    assert "method dpo: tokens/s counts each pair's chosen and rejected sequences" in " ".join(
        capsys.readouterr().out.split()
    )


def test_a_pairs_tokens_count_both_sequences(tiny_model_dir):
    """quickft data's and the header's token figures for pairs: what the model reads (prompt + chosen, prompt +
    rejected) and what the loss sees (the two answers), recounted from the sequences themselves."""
    from transformers import AutoTokenizer

    from quickft.data.pairs import prepare_pairs, sequences
    from quickft.recipe import Recipe

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    recipe = Recipe(model=str(tiny_model_dir), method="dpo", data=Data(path="x", prompt_template=PROMPT))
    pairs = [Pair(f"¿Cuánto es {a} + {b}?", str(a + b), str(a + b + 10), f"x:{a}") for a, b in SUMS[:20]]
    prepared = prepare_pairs(pairs, tok, recipe)
    rows = sequences(prepared.rows)
    assert len(rows) == 40 and prepared.tokens == sum(len(r["input_ids"]) for r in rows)
    assert prepared.trained_tokens == sum(sum(r["completion_mask"]) for r in rows)
