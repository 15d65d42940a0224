"""`quickft chat` against real runs: the shipped demo, a LoRA run, a chat-format run."""

import json
import os
import re
import subprocess
import sys

import pytest

from quickft.chat import command, turn
from quickft.cli import main
from quickft.session import build_prompt, load_session
from tests.conftest import ROOT


def chat(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quickft", "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_demo_learns_and_chat_answers(tiny_math_run):
    summary = json.loads((tiny_math_run / "summary.json").read_text())
    assert summary["test_cases"]["n"] == 1000 and summary["test_cases"]["score"] >= 0.95
    result = chat(str(tiny_math_run), "--prompt", "¿Cuánto es 23 + 45?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "68\n", "only the answer goes to stdout"
    assert "loaded the fully fine-tuned model" in result.stderr


def test_chat_scores_unseen_sums_through_stdin(tiny_math_run):
    blocks = (ROOT / "data/sumas_test.txt").read_text(encoding="utf-8").split("\n###\n")[:60]
    pairs = [re.match(r"Pregunta: (.*)\nRespuesta: (\d+)", b.strip()).groups() for b in blocks]
    result = chat(str(tiny_math_run), stdin="\n".join(q for q, _ in pairs) + "\n")
    assert result.returncode == 0, result.stderr
    answers = result.stdout.splitlines()
    assert len(answers) == len(pairs)
    correct = sum(a.strip() == expected for a, (_, expected) in zip(answers, pairs, strict=True))
    assert correct / len(pairs) >= 0.90, f"{correct}/{len(pairs)}"


def test_chat_timing_figures_add_up(tiny_math_run):
    from transformers import AutoTokenizer

    result = chat(str(tiny_math_run), "--prompt", "¿Cuánto es 23 + 45?")
    m = re.search(r"time to first token (\d+) ms · (\d+) tokens in ([\d.]+) s · ([\d.]+) tokens/s", result.stderr)
    assert m, result.stderr
    first_ms, tokens, total, rate = int(m[1]), int(m[2]), float(m[3]), float(m[4])
    tok = AutoTokenizer.from_pretrained(tiny_math_run)
    assert tokens == len(tok("68", add_special_tokens=False)["input_ids"]) + 1  # the answer, then end-of-sequence
    assert rate == pytest.approx(tokens / total, rel=0.1)  # total is printed rounded to 10 ms
    assert 0 < first_ms <= total * 1000 + 10


def test_compare_base_shows_two_different_answers(tiny_math_run):
    result = chat(str(tiny_math_run), "--prompt", "¿Cuánto es 23 + 45?", "--compare-base")
    assert result.returncode == 0, result.stderr
    base = re.search(r"^base: (.*)$", result.stdout, re.M)[1]
    tuned = re.search(r"^fine-tuned: (.*)$", result.stdout, re.M)[1]
    assert tuned == "68" and base != tuned
    assert "base: the base model (random weights: this run trained from scratch)" in result.stderr


def test_interactive_chat_in_a_terminal(tiny_math_run):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "quickft", "chat", str(tiny_math_run)],
        cwd=str(ROOT),
        encoding="utf-8",
        timeout=120,
        env=os.environ | {"TERM": "dumb"},
    )
    child.expect_exact("trained on messages like '¿Cuánto es")  # the framing, before the first message
    child.expect_exact("/params [temperature=0.7 top_p=0.9 max_new_tokens=128], /exit")
    child.expect_exact(">>> ")
    child.sendline("/help")
    child.expect_exact("single-turn: each message is put in the training template 'Pregunta: {prompt}")
    child.expect_exact(">>> ")
    child.sendline("¿Cuánto es 23 + 45?")
    child.expect(r"\r\n68\r\n")
    child.expect("tokens/s")
    child.expect_exact(">>> ")
    child.sendline("/params max_new_tokens=2")
    child.expect("max_new_tokens=2")
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_before_any_text_stops_the_answer_without_calling_it_empty(tiny_math_run, tmp_path):
    """An answer stopped with Ctrl-C before any text showed is the user's stop, not an empty answer. A copy of the
    demo run made to write only padding (every other token suppressed in its generation_config.json: a special token,
    which shows as nothing) for up to 100,000 tokens: transformers warns once the answer passes the model's 64
    positions, so Ctrl-C lands while it is generating and nothing has shown."""
    import shutil

    pexpect = pytest.importorskip("pexpect")
    run = tmp_path / "pads"
    shutil.copytree(tiny_math_run, run)
    config = json.loads((run / "generation_config.json").read_text())
    pad = config["pad_token_id"]
    vocab = json.loads((run / "config.json").read_text())["vocab_size"]
    config["suppress_tokens"] = [i for i in range(vocab) if i != pad]
    (run / "generation_config.json").write_text(json.dumps(config))
    child = pexpect.spawn(
        sys.executable,
        ["-m", "quickft", "chat", str(run)],
        cwd=str(ROOT),
        encoding="utf-8",
        timeout=120,
        env=os.environ | {"TERM": "dumb"},
    )
    child.expect_exact(">>> ")
    child.sendline("/params max_new_tokens=100000")
    child.expect_exact(">>> ")
    child.sendline("¿Cuánto es 23 + 45?")
    child.expect("exceeded the model's predefined maximum length")  # generating, nothing shown
    child.sendintr()
    child.expect_exact(">>> ")
    stopped = child.before
    assert "(stopped)" in stopped and re.search(r"\d+ tokens in", stopped)
    assert "empty answer" not in stopped and "ended at once" not in stopped
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_prompt_is_framed_exactly_as_in_training(tiny_math_run):
    session = load_session(tiny_math_run)
    assert session.style == "qa" and session.params["temperature"] == 0.0
    assert build_prompt(session, "¿Cuánto es 23 + 45?") == "Pregunta: ¿Cuánto es 23 + 45?\nRespuesta: "
    samples = [json.loads(line) for line in (tiny_math_run / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"] == build_prompt(session, samples[0]["prompt"].split("\n")[0].removeprefix("Pregunta: "))


def test_an_empty_answer_is_flagged_with_the_training_framing(tiny_math_run):
    """A model that ends at once (forced here: every token but end-of-sequence suppressed) gets a warning that
    shows how its training data was worded."""
    import io

    from rich.console import Console

    session = load_session(tiny_math_run)
    eos = session.tokenizer.eos_token_id
    session.model.generation_config.suppress_tokens = [i for i in range(len(session.tokenizer)) if i != eos]
    err = io.StringIO()
    out = io.StringIO()
    assert turn(session, "12+34", out=out, err=Console(file=err, width=200)) == ""
    assert "empty answer: the model ended at once; it was trained on messages like '¿Cuánto es" in err.getvalue()


def test_streaming_hands_out_whole_characters(tiny_model_dir):
    """A byte-level tokenizer splits 你好 and ñ into byte tokens; the streamer never shows half a character, and
    bytes that never form one are left out and counted."""
    import torch
    from transformers import AutoTokenizer

    from quickft.generation import Utf8Streamer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "你好, señor 🙂 12"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text), "some characters take several tokens"
    stats: dict = {}
    streamer = Utf8Streamer(tok, stats, 0.0)
    streamer.put(torch.tensor([[1, 2]]))  # the prompt: skipped
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    pieces = list(streamer)
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 1 and stats["tokens"] == len(ids) and stats["invalid_utf8"] == 0
    # a lone first byte of a 3-byte character, then plain text: never a character, left out
    lead = tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(tok("你", add_special_tokens=False)["input_ids"])[:1])
    streamer = Utf8Streamer(tok, stats, 0.0)
    streamer.put(torch.tensor([[1]]))
    for i in lead + tok(" hola", add_special_tokens=False)["input_ids"]:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert "".join(streamer) == " hola" and stats["invalid_utf8"] == 1


def test_chat_format_is_multi_turn_and_reset_forgets(chat_run, capsys):
    from rich.console import Console

    session = load_session(chat_run)
    assert session.style == "chat" and session.params["temperature"] == 0.7
    session.params["temperature"] = 0.0
    turn(session, "2 + 3", err=Console(stderr=True))
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    prompt = build_prompt(session, "4 + 4")
    assert prompt.startswith("<|im_start|>user\n2 + 3<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.endswith("<|im_start|>user\n4 + 4<|im_end|>\n<|im_start|>assistant\n")
    assert command(session, "/reset", Console(stderr=True)) is False and session.history == []
    assert command(session, "/exit", Console(stderr=True)) is True


def test_bad_run_directories(tmp_path, lora_recipe, capsys):
    (tmp_path / "plain").mkdir()
    running = tmp_path / "running"
    running.mkdir()
    (running / "recipe.json").write_text("{}")
    (running / "status.json").write_text('{"status": "running"}')
    cases = [
        (tmp_path / "missing", "run directory not found"),
        (tmp_path / "plain", "is not a quickft run directory"),
        (running, "the run is running, not completed"),
    ]
    for path, message in cases:
        for verb in ("chat", "eval"):  # the run is checked before the model loads
            assert main([verb, str(path), *(["--prompt", "hola"] if verb == "chat" else [])]) == 2
            err = capsys.readouterr().err
            assert message in err and "fix:" in err and "Traceback" not in err
            assert "loading the model" not in err, verb


def test_missing_base_model_is_a_clear_error(tmp_path, lora_recipe, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(lora_recipe), "max_steps=1", "--output-dir", str(run_dir), "--quiet"]) == 0
    backend = json.loads((run_dir / "backend.json").read_text())
    backend["model_path"] = str(tmp_path / "deleted-model")
    (run_dir / "backend.json").write_text(json.dumps(backend))
    capsys.readouterr()
    assert main(["chat", str(run_dir), "--prompt", "hola"]) == 2
    err = capsys.readouterr().err
    assert "deleted-model" in err and "Traceback" not in err


def test_system_prompt_for_chat_runs_only(chat_run, lora_recipe, tmp_path, capsys):
    code = main(["chat", str(chat_run), "--system", "Responde solo con el número.", "--prompt", "2 + 3"])
    assert code == 0, capsys.readouterr().err
    session = load_session(chat_run)
    session.system = "Responde solo con el número."
    prompt = build_prompt(session, "2 + 3")
    assert prompt.startswith("<|im_start|>system\nResponde solo con el número.<|im_end|>\n<|im_start|>user\n2 + 3")
    from rich.console import Console

    assert command(session, "/reset", Console(stderr=True)) is False
    assert build_prompt(session, "1 + 1").startswith("<|im_start|>system")  # /reset keeps the system prompt
    qa_run = tmp_path / "qa"
    assert main(["run", str(lora_recipe), "max_steps=1", "--output-dir", str(qa_run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["chat", str(qa_run), "--system", "x", "--prompt", "1 + 1"]) == 2
    err = capsys.readouterr().err
    assert "--system" in err and "chat data" in err and "Traceback" not in err
