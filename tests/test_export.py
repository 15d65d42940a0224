"""`quickft export`: each form loaded back by the tool its users load it with, answering as `quickft chat` does."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quickft.cli import main
from quickft.errors import UserError
from tests.conftest import PROMPT, ROOT, write_recipe


def _gguf_tools_missing() -> str | None:
    from quickft.export.llamacpp import find_converter, has_llama_cpp_python, install_command

    try:
        find_converter()
    except UserError as e:
        return e.message
    return None if has_llama_cpp_python() else f"llama-cpp-python is not installed ({install_command()})"


requires_gguf = pytest.mark.skipif(
    _gguf_tools_missing() is not None,
    reason=f"{_gguf_tools_missing()}; `make test` installs llama.cpp's converter and llama-cpp-python",
)


def held_out(run_dir: Path, n: int = 10) -> list[str]:
    """The user's part of the run's first held-out prompts (what a person types into chat)."""
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    before, _, after = PROMPT.partition("{prompt}")
    return [r["prompt"][len(before) : len(r["prompt"]) - len(after)] for r in rows[:n]]


def chat_answers(run_dir: Path, questions: list[str]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "quickft", "chat", str(run_dir)],
        input="\n".join(questions) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# transformers alone, in a fresh process where peft and quickft cannot be imported
PLAIN_TRANSFORMERS = r"""
import json, sys
sys.modules["peft"] = None
sys.modules["quickft"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, prompts, max_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
answers = []
for p in prompts:
    ids = tok(p, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_new, do_sample=False)
    answers.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
print(json.dumps(answers))
"""


def plain_transformers_answers(model_dir: Path, questions: list[str], max_new_tokens: int) -> list[str]:
    prompts = [PROMPT.replace("{prompt}", q) for q in questions]
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(model_dir), json.dumps(prompts), str(max_new_tokens)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def export(*args) -> tuple[int, dict | None]:
    code = main(["export", *map(str, args)])
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    record = json.loads((out / "export.json").read_text()) if out and (out / "export.json").is_file() else None
    return code, record


@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory, tiny_math_run) -> dict[str, Path]:
    """LoRA and QLoRA runs on the trained demo model (answers that mean something), a few seconds each."""
    tmp = tmp_path_factory.mktemp("adapters")
    runs = {}
    for mode in ("lora", "qlora"):
        recipe = write_recipe(
            tmp / f"{mode}.py",
            f"""
            recipe = Recipe(
                model={str(tiny_math_run)!r},
                data=Data(path={str(ROOT / "data/sumas.txt")!r}, format="blocks", prompt_template={PROMPT!r},
                          test_path={str(ROOT / "data/sumas_test.txt")!r}, max_test_examples=20),
                mode={mode!r}, lora=LoRA(r=4, alpha=16, dropout=0.0, target_modules="all-linear"),
                max_seq_length=32, micro_batch_size=32, learning_rate=2e-2, max_steps=8, logging_steps=4,
                max_new_tokens=4, backend="peft",
            )
            """,
        )
        assert main(["run", str(recipe), "--output-dir", str(tmp / mode), "--quiet"]) == 0
        runs[mode] = tmp / mode
    return runs


def test_merged_full_fine_tune_answers_as_chat_with_transformers_alone(tiny_math_run, tmp_path):
    code, record = export(tiny_math_run, "--out", tmp_path / "m")
    assert code == 0
    check = record["check"]["merged"]
    assert check["ok"] and check["identical"] == check["of"] == 20
    questions = held_out(tiny_math_run)
    tuned = chat_answers(tiny_math_run, questions)
    assert plain_transformers_answers(tmp_path / "m", questions, 4) == tuned
    assert sum(a.isdigit() for a in tuned) == len(tuned), "the demo answers sums: a check on real answers"
    assert not (tmp_path / "m" / "adapter_config.json").exists()
    written = sum(f.stat().st_size for f in (tmp_path / "m").iterdir() if f.name != "export.json")
    assert record["merged"]["bytes"] == written  # the size the report prints


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_merged_adapter_is_the_adapter_run_without_peft(adapter_runs, tmp_path, mode):
    import torch
    from transformers import AutoModelForCausalLM

    from quickft.session import load_session

    run = adapter_runs[mode]
    code, record = export(run, "--out", tmp_path / "m", "--json")
    assert code == 0 and record["check"]["merged"]["ok"] and record["check"]["merged"]["of"] == 20
    assert record["dequantized_from_4bit"] is (mode == "qlora") and record["trained_on"] == "cpu"
    questions = held_out(run)
    assert plain_transformers_answers(tmp_path / "m", questions, 4) == chat_answers(run, questions)

    # logits: the merged model computes what chat's adapter model computes, and not what the base alone does
    session = load_session(run)  # the base (4-bit for QLoRA, as in training) + the adapter, as chat loads it
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    batch = session.tokenizer([PROMPT.replace("{prompt}", q) for q in questions], return_tensors="pt", padding=True)
    with torch.no_grad():
        tuned = session.model(**batch).logits
        with session.model.disable_adapter():
            base = session.model(**batch).logits
        got = merged(**batch).logits
    mask = batch["attention_mask"].bool()
    error, adapter_effect = (got - tuned)[mask].abs().max(), (tuned - base)[mask].abs().max()
    assert error < 1e-4 and adapter_effect > 100 * error, (error, adapter_effect)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"


def test_qlora_is_merged_into_the_dequantized_base_not_the_original(adapter_runs, tmp_path):
    """Merging into the original 16/32-bit base would give another model than the one QLoRA trained."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = adapter_runs["qlora"]
    assert export(run, "--out", tmp_path / "m")[0] == 0
    base = json.loads((run / "backend.json").read_text())["model_path"]
    wrong = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), run)
    wrong = wrong.merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    name = "model.layers.0.self_attn.q_proj.weight"
    gap = (merged.state_dict()[name] - wrong.state_dict()[name]).abs().max()
    assert gap > 1e-3, "the 4-bit rounding the adapter trained against is in the merged weights"


def test_a_qlora_export_says_where_its_base_was_dequantized():
    """The merge de-quantizes on the CPU; a run trained on a GPU ran bitsandbytes' CUDA kernel, which is said."""
    from quickft.export import dequantization_note

    assert (
        dequantization_note("cpu")
        == "QLoRA: merged into the base de-quantized from 4-bit (on the CPU), never into 4-bit weights"
    )
    on_gpu = dequantization_note("cuda")
    assert on_gpu.startswith(dequantization_note("cpu")) and "bitsandbytes' CUDA kernel" in on_gpu
    assert "the check compares the merged model's answers with the adapter's" in on_gpu


def test_the_plan_states_memory_and_disk_from_the_weights(adapter_runs, tmp_path, capsys):
    from safetensors import safe_open

    run = adapter_runs["lora"]
    base = Path(json.loads((run / "backend.json").read_text())["model_path"])
    with safe_open(base / "model.safetensors", "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert export(run, "--out", tmp_path / "m", "--no-check")[0] == 0
    err = capsys.readouterr().err
    assert n == 1_086_976 and f"{n:,} weights in float32" in err  # the demo's model, 4 bytes a weight
    assert f"needs about {n * 4 / 2**20:.1f} MB of memory (one float32 copy" in err
    assert f"and {n * 4 / 2**20:.1f} MB of disk" in err


def test_bad_inputs_exit_2_with_one_message(tiny_math_run, tmp_path, capsys, monkeypatch):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.json").write_text("{}")
    (unfinished / "status.json").write_text('{"status": "interrupted"}')
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    cases = [
        ([str(tmp_path)], "not a quickft run directory"),
        ([str(tmp_path / "nope")], "run directory not found"),
        ([str(unfinished)], "the run is interrupted, not completed"),
        ([str(tiny_math_run), "--to", "onnx"], "--to onnx: unknown form"),
        ([str(tiny_math_run), "--to", "gguf", "--quant", "q3"], "--quant q3: not a quantization for a GGUF"),
        ([str(tiny_math_run), "--quant", "q8_0"], "--quant is for --to gguf, gguf-lora or ollama"),
        ([str(tiny_math_run), "--out", str(tmp_path / "taken")], "is not empty: an export is never overwritten"),
    ]
    for argv, says in cases:
        assert main(["export", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert says in err and err.count("error:") == 1 and "Traceback" not in err, err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"

    empty = tmp_path / "no-llama-cpp"
    empty.mkdir()
    monkeypatch.setenv("QUICKFT_LLAMA_CPP", str(empty))
    assert main(["export", str(tiny_math_run), "--to", "gguf", "--out", str(tmp_path / "g")]) == 2
    assert f"QUICKFT_LLAMA_CPP={empty}: no convert_hf_to_gguf.py there" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_no_converter_anywhere_names_the_install_command(monkeypatch, tmp_path):
    from quickft.export import llamacpp

    monkeypatch.delenv("QUICKFT_LLAMA_CPP", raising=False)
    monkeypatch.setattr(llamacpp, "kept_copy", lambda: tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as e:
        llamacpp.find_converter()
    assert "no GGUF converter found" in e.value.message
    assert f"{sys.executable} -m quickft.export.llamacpp install" in e.value.hint


def test_a_full_disk_is_refused_before_anything_is_written(tiny_math_run, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))  # a disk we can't fill
    assert main(["export", str(tiny_math_run), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "not enough disk for the export: it needs about 4.1 MB" in err and "1000 B free" in err
    assert not (tmp_path / "m").exists()


def test_llama_cpp_pre_tokenizer_is_named_only_for_identical_rules(tiny_math_run, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from quickft.export.llamacpp import pre_tokenizer_name

    assert pre_tokenizer_name(tiny_math_run / "tokenizer.json") == "superbpe"  # quickft's Scratch tokenizer
    digits = pre_tokenizers.Digits(individual_digits=True)
    no_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for pre, vocab, name in (
        (pre_tokenizers.ByteLevel(add_prefix_space=False), {}, "gpt-2"),
        (pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False)]), {}, "starcoder"),
        (pre_tokenizers.Sequence([digits, no_regex]), {"ab": 0}, "superbpe"),
        # a two-digit token: llama.cpp's superbpe keeps "12" whole and would merge it, the tokenizer never does
        (pre_tokenizers.Sequence([digits, no_regex]), {"12": 0}, None),
        (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), {}, None),  # digits not split
        (pre_tokenizers.ByteLevel(add_prefix_space=True), {}, None),
        (pre_tokenizers.Whitespace(), {}, None),
    ):
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre
        tok.save(str(tmp_path / "t.json"))
        assert pre_tokenizer_name(tmp_path / "t.json") == name, (pre, vocab)


# ---------------------------------------------------------------------------------------------- GGUF and Ollama


def llama_cpp_answers(gguf: Path, questions: list[str], max_tokens: int) -> list[str]:
    """llama-cpp-python's own completion API, greedy, with its own tokenizer: what a llama.cpp user gets."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=64, verbose=False, seed=0)
    answers = []
    for q in questions:
        out = llm.create_completion(PROMPT.replace("{prompt}", q), max_tokens=max_tokens, temperature=0.0, top_k=1)
        answers.append(out["choices"][0]["text"].strip())
    llm.close()
    return answers


@requires_gguf
def test_gguf_loads_in_llama_cpp_and_answers_as_chat(tiny_math_run, tmp_path):
    code, record = export(tiny_math_run, "--to", "gguf", "--out", tmp_path / "g")
    assert code == 0, record
    gguf = tmp_path / "g" / "tiny_math-f16.gguf"
    assert gguf.is_file() and record["gguf"]["file"] == gguf.name
    check = record["check"]
    assert check["gguf"]["ok"] and check["gguf"]["identical"] == check["gguf"]["of"] == 20
    assert check["gguf"]["prompt_tokens_identical"] == 20

    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_math_run)
    fields = GGUFReader(str(gguf)).fields
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"].contents() == tok.pad_token_id
    assert fields["tokenizer.ggml.pre"].contents() == "superbpe"
    questions = held_out(tiny_math_run)
    assert llama_cpp_answers(gguf, questions, 4) == chat_answers(tiny_math_run, questions)
    assert not list((tmp_path / "g").glob(".merged-*")), "the merged model in between is removed"


@requires_gguf
@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_gguf_states_its_agreement(tiny_math_run, tmp_path, quant):
    code, record = export(tiny_math_run, "--to", "gguf", "--quant", quant, "--out", tmp_path / "g")
    assert code == 0
    check = record["check"]["gguf"]
    assert check["prompt_tokens_identical"] == check["of"] == 20  # what `ok` asks of rounded weights
    assert check["identical"] >= 0.8 * check["of"], check  # measured here: see docs/export.md
    assert record["gguf"]["bytes"] == (tmp_path / "g" / record["gguf"]["file"]).stat().st_size
    assert record["check"]["metadata"]["file_type"] == {"q8_0": 7, "q4_k_m": 15}[quant]  # llama.cpp's ftype ids


@requires_gguf
def test_ollama_modelfile_frames_prompts_as_training_did(tiny_math_run, tmp_path):
    code, record = export(tiny_math_run, "--to", "ollama", "--out", tmp_path / "o")
    assert code == 0 and record["check"]["ok"]
    modelfile = (tmp_path / "o" / "Modelfile").read_text(encoding="utf-8")
    lines = modelfile.splitlines()
    assert f"FROM ./{record['gguf']['file']}" in lines and (tmp_path / "o" / record["gguf"]["file"]).is_file()
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template.replace("{{ .Prompt }}", "¿Cuánto es 2 + 2?") == PROMPT.replace("{prompt}", "¿Cuánto es 2 + 2?")
    assert 'PARAMETER stop "<|endoftext|>"' in lines and "PARAMETER temperature 0.0" in lines
    assert "ollama create tiny_math -f Modelfile" in record["ollama"]["create"]


@requires_gguf
def test_chat_run_keeps_its_chat_template_in_gguf_and_modelfile(chat_run, tmp_path):
    code, record = export(chat_run, "--to", "ollama", "--quant", "f16", "--out", tmp_path / "o")
    assert code == 0, record
    assert record["check"]["metadata"]["ok"] and record["check"]["metadata"]["has_chat_template"]
    modelfile = (tmp_path / "o" / "Modelfile").read_text(encoding="utf-8")
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile

    from gguf import GGUFReader
    from transformers import AutoTokenizer

    gguf = tmp_path / "o" / record["gguf"]["file"]
    template = GGUFReader(str(gguf)).fields["tokenizer.chat_template"].contents()
    assert template == AutoTokenizer.from_pretrained(chat_run).chat_template


def test_help_lists_the_four_forms():
    result = subprocess.run(
        [sys.executable, "-m", "quickft", "export", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, COLUMNS="160"),
    )
    assert result.returncode == 0 and "merged|gguf|gguf-lora|ollama" in result.stdout
    assert "--to ollama" in result.stdout and "--to gguf-lora" in result.stdout


@requires_gguf
def test_a_wrong_pre_tokenizer_fails_the_check(tiny_math_run, tmp_path, monkeypatch, capsys):
    """The tokenization check can fail: name GPT-2's rules for the demo's tokenizer, whose merges cross spaces."""
    from quickft.export import llamacpp

    monkeypatch.setattr(llamacpp, "pre_tokenizer_name", lambda path: "gpt-2")
    code, record = export(tiny_math_run, "--to", "gguf", "--out", tmp_path / "g")
    assert code == 1
    check = record["check"]["gguf"]
    assert not check["ok"] and check["prompt_tokens_identical"] < check["of"]
    assert "✗ check, GGUF (llama.cpp) vs merged model" in capsys.readouterr().out


def test_rounded_weights_may_change_answers_but_not_tokens():
    from quickft.export.loadback import compare

    ref = [{"prompt_ids": [1, 2], "ids": [5, 0], "text": "5"} for _ in range(4)]
    one_off = ref[:3] + [{"prompt_ids": [1, 2], "ids": [6, 0], "text": "6"}]
    retokenized = ref[:3] + [{"prompt_ids": [1, 3], "ids": [5, 0], "text": "5"}]
    garbage = ref[:1] + [{"prompt_ids": [1, 2], "ids": [9], "text": "9"}] * 3
    assert compare(ref, ref)["ok"] and not compare(ref, one_off)["ok"]  # exact: every answer
    rounded = "q8_0 rounds the weights"
    assert compare(ref, one_off, rounded=rounded)["ok"]
    assert not compare(ref, retokenized, rounded=rounded)["ok"]  # a tokenizer difference is never rounding
    assert not compare(ref, garbage, rounded=rounded)["ok"]  # 1 of 4: broken, not rounded
    assert compare(ref, one_off, rounded=rounded)["first_difference"] == {"prompt": None, "expected": "5", "got": "6"}


def test_a_full_fine_tune_exports_in_the_dtype_its_base_was_published_in(tmp_path, tiny_model_dir, sums_file):
    """Training keeps float32 master weights; the export goes back to the base's bfloat16, and says so."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    recipe = write_recipe(
        tmp_path / "full.py",
        f"""
        recipe = Recipe(
            model={str(base)!r}, data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=4),
            mode="full", max_seq_length=32, micro_batch_size=8, max_steps=4, logging_steps=2, max_new_tokens=3,
        )
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dtype"] == "float32"
    code, record = export(tmp_path / "run", "--out", tmp_path / "m")
    assert code == 0 and record["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    check = record["check"]["merged"]
    assert check["rule"].startswith("the merged weights are rounded to bfloat16") and check["ok"]


def test_load_back_goes_where_the_merged_model_fits():
    """A 4 GB card that trained Phi-2 in 4-bit cannot hold its 5.6 GB 16-bit merge: the check loads it on the CPU."""
    from quickft.session import load_back_device

    assert load_back_device(5_600_000_000, 3_900_000_000) == "cpu"
    assert load_back_device(1_000_000_000, 3_900_000_000) == "cuda"
    assert load_back_device(1_000, None) == "cpu"  # no GPU


def test_out_of_gpu_memory_loading_back_checks_on_the_cpu_and_a_failed_check_keeps_the_merge(
    adapter_runs, tmp_path, monkeypatch, capsys
):
    """The one fake: the GPU running out of memory while the merged model is loaded back (a real one needs a GPU).
    The export goes on with the check on the CPU; a check that fails for another reason keeps the merged model."""
    import torch

    from quickft import export as export_module

    real = export_module.answers_of_dir

    def out_of_memory_on_the_gpu(model_dir, prompts, max_new_tokens, device=None):
        if device is None:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model_dir, prompts, max_new_tokens, device=device)

    monkeypatch.setattr(export_module, "answers_of_dir", out_of_memory_on_the_gpu)
    code, record = export(adapter_runs["lora"], "--out", tmp_path / "m", "--json")
    assert code == 0 and record["check"]["merged"]["ok"]
    assert record["check"]["loaded_back_on"] == "cpu, float32 (out of GPU memory)"

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(export_module, "answers_of_dir", broken)
    assert export(adapter_runs["lora"], "--out", tmp_path / "kept")[0] != 0
    assert "is complete and kept" in capsys.readouterr().err
    assert list((tmp_path / "kept").glob("*.safetensors")) and (tmp_path / "kept" / "config.json").is_file()


def test_a_run_trained_in_fp16_merges_in_fp16_even_from_a_bf16_base(adapter_runs, tmp_path):
    """A T4, V100 or GTX 10xx has no bf16: a run trained there in fp16 is merged in fp16, not in the base's bf16."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quickft.export import make_plan

    run = tmp_path / "fp16-run"
    shutil.copytree(adapter_runs["lora"], run)
    backend = json.loads((run / "backend.json").read_text())
    base = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(backend["model_path"], dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(backend["model_path"]).save_pretrained(base)
    for precision, expected in (("bf16", "bfloat16"), ("fp16", "float16")):
        backend |= {"model_path": str(base), "precision": precision}
        (run / "backend.json").write_text(json.dumps(backend))
        plan = make_plan(str(run), to="merged", quant=None, out=str(tmp_path / "out"), dtype="auto")
        assert plan["dtype"] == expected, precision
    assert "the run trained in fp16" in plan["say"]


def test_the_gguf_tools_build_once_per_machine():
    """llama-cpp-python is built from the index's source distribution by name, so pip's wheel cache keeps the build
    (a second install here took 5 s instead of 8 min 19 s); a CMAKE_ARGS of the user's own is a build of its own,
    never taken from the cache nor left in it."""
    from quickft.export.llamacpp import build_arguments

    assert build_arguments({}) == ["--no-binary", "llama-cpp-python"]
    assert build_arguments({"CMAKE_ARGS": "-DGGML_CUDA=on"}) == ["--no-binary", "llama-cpp-python", "--no-cache-dir"]


# ---------------------------------------------------------------------------------------------- every install route
# `make test-plain` (a plain `pip install -e .` plus `python -m quickft.export.llamacpp install`) runs these two, as the
# default and old-GPU routes do: `-k every_install_route`.


@pytest.fixture(scope="module")
def small_lora_run(tmp_path_factory, tiny_model_dir, sums_file) -> Path:
    """A LoRA run of a small Llama checkpoint (the tests' tiny one, a few seconds): the user's case in issue 44."""
    tmp = tmp_path_factory.mktemp("small_lora")
    recipe = write_recipe(
        tmp / "small_lora.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=4),
            lora=LoRA(r=4, alpha=8, dropout=0.0), max_seq_length=32, micro_batch_size=8, learning_rate=5e-3,
            max_steps=12, logging_steps=4, max_new_tokens=4, backend="peft",
        )
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


@requires_gguf
def test_every_install_route_exports_a_lora_run_to_gguf_gguf_lora_and_ollama(small_lora_run, tmp_path):
    code, record = export(small_lora_run, "--to", "gguf", "--out", tmp_path / "g")
    assert code == 0 and record["check"]["gguf"]["ok"] and record["check"]["metadata"]["ok"], record
    code, record = export(small_lora_run, "--to", "ollama", "--out", tmp_path / "o")
    assert code == 0 and record["check"]["gguf"]["ok"] and (tmp_path / "o" / "Modelfile").is_file(), record
    code, record = export(small_lora_run, "--to", "gguf-lora", "--out", tmp_path / "l")
    check = record["check"]["gguf_lora"]
    assert code == 0 and check["ok"] and check["base"] == "f16", record  # checked on an f16 GGUF of the base
    assert check["agreement"] >= 0.9 and check["prompt_tokens_identical"] == check["of"] == 4
    written = sorted(p.name for p in (tmp_path / "l").iterdir())
    assert written == sorted(["export.json", record["gguf_lora"]["file"]])  # the base's f16 GGUF was removed


BLOCK_A_MODULE = """
import os, sys
blocked = os.environ.get("QUICKFT_TEST_BLOCK")
if blocked:  # as if it were not installed, here and in every child: find_spec finds nothing, import raises
    sys.modules[blocked] = None
"""


@requires_gguf
def test_every_install_route_names_a_missing_converter_module(small_lora_run, tmp_path):
    """A converter dependency out of reach (sentencepiece, which llama.cpp's Llama converter imports first, whatever
    the tokenizer): exit 2 naming it and the install command, no traceback; the merged model the conversion started
    from is whole and kept as RUN_DIR/merged; nothing half-written under the export's folder."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_lora_run, run)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(BLOCK_A_MODULE, encoding="utf-8")
    env = os.environ | {"QUICKFT_TEST_BLOCK": "sentencepiece"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "quickft", "export", str(run), "--to", "gguf"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    assert "needs the Python module 'sentencepiece'" in done.stderr and "Traceback" not in done.stderr
    assert f"{sys.executable} -m quickft.export.llamacpp install" in done.stderr
    assert not (run / "gguf").exists()
    kept = json.loads((run / "merged" / "export.json").read_text())
    assert kept["to"] == "merged" and kept["check"]["merged"]["ok"] and (run / "merged" / "config.json").is_file()
    code, record = export(run, "--to", "gguf", "--out", tmp_path / "again")  # installed again: the export goes on
    assert code == 0 and record["check"]["gguf"]["ok"]
