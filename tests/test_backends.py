"""Both backends train the tiny model for real on CPU, offline; both adapters load with plain PEFT."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from quickft.cli import main
from quickft.hardware import Hardware, UnslothStatus, choose
from tests.conftest import ROOT, requires_unsloth

# Any outbound connection fails loudly: a local-directory run must make none (no hub, no usage statistics).
NO_NETWORK = textwrap.dedent(
    """
    import socket, sys
    def refuse(*args, **kwargs):
        raise RuntimeError(f"network access attempted: {args!r}")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    from quickft.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def run_isolated(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`quickft ARGS` in a fresh process with the network cut off (and the hub env vars of a real user unset)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "UNSLOTH_DISABLE_STATISTICS")}
    env |= env_extra or {}
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900
    )


def adapter_changes_output(base_dir, run_dir) -> bool:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    batch = AutoTokenizer.from_pretrained(run_dir)(["Pregunta: ¿Cuánto es 3 + 4?\nRespuesta: "], return_tensors="pt")
    with torch.no_grad():
        before = base(**batch).logits
        after = PeftModel.from_pretrained(base, run_dir)(**batch).logits
    return not torch.allclose(before, after)


@requires_unsloth
def test_unsloth_backend_trains_on_cpu_offline(tmp_path, lora_recipe, tiny_model_dir):
    """Unsloth's own CPU mode (2026.10.9) trains for real, in its own process, with no network."""
    run_dir = tmp_path / "unsloth-run"
    result = run_isolated("run", str(lora_recipe), "--backend", "unsloth", "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    backend = json.loads((run_dir / "backend.json").read_text())
    assert backend["backend"] == "unsloth" and "CPU mode" in backend["reason"]
    assert "Unsloth requested" in result.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert adapter_changes_output(tiny_model_dir, run_dir)


def test_peft_run_makes_no_network_call(tmp_path, lora_recipe):
    run_dir = tmp_path / "peft-run"
    result = run_isolated("run", str(lora_recipe), "--backend", "auto", "max_steps=2", "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    backend = json.loads((run_dir / "backend.json").read_text())
    assert backend["backend"] == "peft" and backend["reason"].startswith("Unsloth not used: no GPU found")
    assert "Unsloth not used: no GPU found" in result.stdout  # said before training, not only saved


def test_peft_qlora_trains_in_4bit_on_cpu(tmp_path, lora_recipe, tiny_model_dir, capsys):
    run_dir = tmp_path / "qlora-run"
    code = main(["run", str(lora_recipe), "mode=qlora", "--output-dir", str(run_dir)])
    out = capsys.readouterr().out
    assert code == 0
    backend = json.loads((run_dir / "backend.json").read_text())
    assert backend["load_in_4bit"] is True and "bitsandbytes' CPU backend" in backend["reason"]
    assert "4-bit NF4" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert adapter_changes_output(tiny_model_dir, run_dir)


def test_unsloth_on_cpu_without_cpu_mode_is_a_clear_error(tmp_path, lora_recipe, monkeypatch, capsys):
    import quickft.hardware as hardware

    monkeypatch.setattr(hardware, "unsloth_status", lambda: hardware.UnslothStatus(True, "2026.10.7"))
    code = main(["run", str(lora_recipe), "--backend", "unsloth", "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "Unsloth cannot run here: no GPU found" in err and "Traceback" not in err


FAKE_T4 = """
import json, sys, types, torch
props = types.SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=15 * 2**30)
torch.cuda.is_available = lambda: True  # the only fake: torch reports a T4, where quickft reads the hardware
torch.cuda.get_device_properties = lambda device=0: props
from quickft.backends import choose_backend
from quickft.recipe import load_recipe
print("CHOICE", json.dumps(choose_backend(load_recipe(sys.argv[1], ["backend=auto"])).to_dict()))
"""


@requires_unsloth
def test_failed_unsloth_import_falls_back_to_peft_with_the_reason(lora_recipe):
    """On a T4 the stack check passes and auto picks Unsloth; its real import then fails (no NVIDIA driver here)."""
    result = subprocess.run([sys.executable, "-c", FAKE_T4, str(lora_recipe)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    choice = json.loads(result.stdout.split("CHOICE ", 1)[1])
    assert choice["backend"] == "peft"
    assert choice["reason"].startswith(
        "Unsloth not used: unsloth failed to import: RuntimeError: Found no NVIDIA driver"
    )
    assert choice["stack"]["verdict"] == "runs" and choice["hardware"]["gpu_name"] == "Tesla T4"


@requires_unsloth
def test_unsloth_requested_but_its_import_fails_is_a_clear_error(tmp_path, lora_recipe):
    # unsloth's own switch: raise at import on a machine without a GPU instead of starting its CPU mode
    result = run_isolated(
        "run",
        str(lora_recipe),
        "--backend",
        "unsloth",
        "--output-dir",
        str(tmp_path / "x"),
        env_extra={"UNSLOTH_DISABLE_CPU_FALLBACK": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "unsloth failed to import: NotImplementedError: Unsloth cannot find any torch accelerator" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()


LOAD_REFUSED = """
import json, sys
import unsloth  # noqa: F401  (first, as quickft imports it)
from unsloth import FastLanguageModel
from quickft.backends import load
from quickft.hardware import Hardware, UnslothStatus, choose
from quickft.recipe import load_recipe

def refuse(*args, **kwargs):  # a refusal Unsloth raises only on GPUs (tokenizer_utils.py), which CPU mode cannot reach
    raise RuntimeError("Unsloth: Fixing chat template failed - please file a report immediately!")

FastLanguageModel.from_pretrained = refuse
import quickft.backends
quickft.backends.placement = lambda choice: None  # the T4 below is a decision's; the weights stay on this CPU
recipe = load_recipe(sys.argv[1], ["backend=auto"])
t4 = Hardware("cuda", "Tesla T4", (7, 5), 15 * 2**30)  # where auto picks Unsloth
choice = choose(t4, UnslothStatus(True, "2026.10.9"))
loaded = load(recipe, choice, sys.argv[2], local=True)
print("CHOICE", json.dumps({"backend": loaded.choice.backend, "reason": loaded.choice.reason,
                            "model": type(loaded.model).__name__}))
"""


@requires_unsloth
def test_unsloth_load_failure_of_any_kind_falls_back_to_peft(lora_recipe, tiny_model_dir):
    result = subprocess.run(
        [sys.executable, "-c", LOAD_REFUSED, str(lora_recipe), str(tiny_model_dir)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    choice = json.loads(result.stdout.split("CHOICE ", 1)[1])
    assert choice["backend"] == "peft" and choice["model"] == "PeftModelForCausalLM"
    assert "Unsloth does not support this model: RuntimeError: Unsloth: Fixing chat template failed" in choice["reason"]


@requires_unsloth
@pytest.mark.parametrize("checkpointing", [False, True])
def test_unsloth_full_finetune_trains_as_the_recipe_says(tmp_path, lora_recipe, checkpointing):
    """Unsloth's loader would turn gradient checkpointing on and train pure 16-bit; the model reports what it got."""
    run_dir = tmp_path / "full"
    result = run_isolated(
        "run",
        str(lora_recipe),
        "--backend",
        "unsloth",
        "mode=full",
        "max_steps=2",
        "--output-dir",
        str(run_dir),
        f"gradient_checkpointing={str(checkpointing).lower()}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads((run_dir / "backend.json").read_text())["model"]
    assert facts["gradient_checkpointing"] is checkpointing
    assert facts["weight_dtypes"] == {"float32": facts["weight_dtypes"]["float32"]}  # fp32 master weights
    assert facts["trainable_dtype"] == "float32" and facts["linear4bit_layers"] == 0
    assert f"gradient checkpointing {'on' if checkpointing else 'off'}" in result.stdout


H200 = Hardware("cuda", "NVIDIA H200", (9, 0), 140 * 2**30)


def test_an_emulated_small_card_is_decided_for_as_that_card():
    """QUICKFT_GPU_MEMORY_GB=4 QUICKFT_GPU_CAPABILITY=6.1 on an H200 is a GTX 1050 Ti for every decision: PEFT in
    fp16 (no bf16, no Unsloth below 7.0), a 4 GiB card in every report; the header says it is emulated."""
    from quickft.hardware import describe, emulate

    ti = emulate(H200, {"QUICKFT_GPU_MEMORY_GB": "4", "QUICKFT_GPU_CAPABILITY": "6.1"})
    assert (ti.capability, ti.vram_bytes, ti.physical_capability, ti.physical_vram_bytes) == (
        (6, 1),
        4 * 2**30,
        (9, 0),
        140 * 2**30,
    )
    choice = choose(ti, UnslothStatus(True, "2026.10.9"), mode="qlora")
    assert (choice.backend, choice.precision, choice.load_in_4bit) == ("peft", "fp16", True)
    assert "the emulated card is compute capability 6.1" in choice.reason
    text = describe(ti)
    assert text.startswith("an emulated 4.0 GiB card of compute capability 6.1, on NVIDIA H200 (140.0 GiB, 9.0")
    # the memory cap alone keeps the card's own capability: an H200 with 4 GiB still picks bf16 and Unsloth
    small = emulate(H200, {"QUICKFT_GPU_MEMORY_GB": "4"})
    assert small.capability == (9, 0) and small.vram_bytes == 4 * 2**30 and small.emulated
    assert choose(small, UnslothStatus(True, "2026.10.9")).precision == "bf16"
    assert emulate(H200, {}) is H200 and emulate(Hardware("cpu"), {"QUICKFT_GPU_MEMORY_GB": "4"}).device == "cpu"
    # no card bigger or newer than the real one
    assert emulate(H200, {"QUICKFT_GPU_MEMORY_GB": "500", "QUICKFT_GPU_CAPABILITY": "12.0"}) == Hardware(
        "cuda", "NVIDIA H200", (9, 0), 140 * 2**30, (9, 0), 140 * 2**30
    )


@pytest.mark.parametrize(
    "env, says",
    [
        ({"QUICKFT_GPU_MEMORY_GB": "four"}, "QUICKFT_GPU_MEMORY_GB='four' is not a positive number"),
        ({"QUICKFT_GPU_MEMORY_GB": "-1"}, "QUICKFT_GPU_MEMORY_GB='-1' is not a positive number"),
        ({"QUICKFT_GPU_CAPABILITY": "sm_61"}, "QUICKFT_GPU_CAPABILITY='sm_61' is not a compute capability"),
    ],
)
def test_a_bad_emulation_variable_is_a_user_error(env, says):
    from quickft.errors import UserError
    from quickft.hardware import emulate

    with pytest.raises(UserError, match=re.escape(says)):
        emulate(H200, env)


def test_the_emulated_cards_memory_holds_this_processs_cuda_context_too():
    """torch's memory fraction caps its allocator only; on a real 4 GB card the CUDA context comes out of the same
    4 GB. With 600 MiB held outside torch on a 140 GiB card: torch may reserve 4 GiB less those 600 MiB."""
    from quickft.backends import memory_fraction

    total, context = 140 * 2**30, 600 * 2**20
    reserved = 0
    fraction, outside = memory_fraction(4 * 2**30, total, free=total - context - reserved, reserved=reserved)
    assert outside == context and fraction * total == pytest.approx(4 * 2**30 - context)
    # memory torch already reserved is its own, not the context's
    fraction, outside = memory_fraction(4 * 2**30, total, free=total - context - 2**30, reserved=2**30)
    assert outside == context
    assert memory_fraction(2**20, total, free=total - context, reserved=0)[0] == 0.0  # a card smaller than the context


def test_emulating_a_card_sets_torchs_cap_and_attention(monkeypatch):
    """The one fake: torch's CUDA calls (a GPU we don't have). What is set is cap_gpu_memory's own decision."""
    from quickft.backends import cap_gpu_memory
    from quickft.hardware import emulate

    calls = {}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (H200.vram_bytes - 500 * 2**20, H200.vram_bytes))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, *a: calls.update(fraction=f))
    monkeypatch.setattr(torch.backends.cuda, "enable_flash_sdp", lambda on: calls.update(flash=on))
    assert cap_gpu_memory(H200) is None and calls == {}
    t4 = emulate(H200, {"QUICKFT_GPU_MEMORY_GB": "16", "QUICKFT_GPU_CAPABILITY": "7.5"})
    done = cap_gpu_memory(t4)
    assert calls == {"fraction": done["fraction"], "flash": False}
    assert done["fraction"] * H200.vram_bytes == pytest.approx(16 * 2**30 - 500 * 2**20)
    calls.clear()
    cap_gpu_memory(emulate(H200, {"QUICKFT_GPU_MEMORY_GB": "40"}))  # an A100-40GB-sized H200 keeps flash attention
    assert set(calls) == {"fraction"}


def test_an_emulated_pascal_card_on_the_default_stack_says_what_the_real_card_would_need():
    """The stack check runs the physical card's kernels; the emulated card's need is said, not enforced."""
    from quickft.hardware import emulate
    from quickft.stack import Stack, check

    stack = Stack(
        torch="2.14.1+cu130",
        cuda="13.0",
        torch_archs=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"],
        unsloth="2026.10.9",
        triton="3.5",
        bnb="0.50.2",
        bnb_library="libbitsandbytes_cuda130.so",
        bnb_archs=["sm_75", "sm_80", "sm_90"],
    )
    verdict = check(emulate(H200, {"QUICKFT_GPU_MEMORY_GB": "4", "QUICKFT_GPU_CAPABILITY": "6.1"}), stack)
    assert verdict.status == "peft-only"
    assert "a real 6.1 card could not run this torch" in verdict.reason and "make install-old-gpu" in verdict.reason
    assert "the emulated card is compute capability 6.1" in verdict.unsloth_blocker


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_all_linear_adapts_every_projection_and_never_the_head(architecture, tiny_model_dir, tmp_path):
    """lora.target_modules="all-linear" goes to PEFT as it is: every Linear (GPT-2: Conv1D) layer gets an adapter,
    the output head does not, counted here from the modules themselves."""
    import shutil

    from transformers import AutoModelForCausalLM, GPT2Config

    from quickft.backends import load_peft
    from quickft.hardware import Hardware, UnslothStatus, choose
    from quickft.recipe import Data, Recipe

    model_dir = tiny_model_dir
    if architecture == "gpt2":
        model_dir = tmp_path / "gpt2"
        config = GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=2)
        AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_model_dir / name, model_dir / name)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    projections = {
        name
        for name, module in base.named_modules()
        if type(module).__name__ in ("Linear", "Conv1D") and module is not base.get_output_embeddings()
    }
    recipe = Recipe(model=str(model_dir), data=Data(path="unused.jsonl"), backend="peft")
    choice = choose(Hardware("cpu"), UnslothStatus(False), requested="peft", mode="lora")
    model = load_peft(recipe, choice, str(model_dir), local=True).model
    adapted = {
        name.removeprefix("base_model.model.") for name, module in model.named_modules() if hasattr(module, "lora_A")
    }
    assert adapted == projections and len(projections) >= 8
    assert not any("lm_head" in name for name in adapted)


def test_every_peft_load_is_placed_on_the_chosen_device():
    """16-bit LoRA, full runs and 4-bit alike: a GPU choice puts the weights on that GPU (each process's own under
    torchrun), so chat, eval and export's load-back do not run on the CPU."""
    import os

    from quickft.backends import placement
    from quickft.hardware import Choice

    gpu = Choice("peft", "", "fp16", False, "cuda")
    assert placement(gpu) == {"": 0} and placement(Choice("peft", "", "fp32", False, "mps")) == {"": "mps"}
    assert placement(Choice("peft", "", "fp32", False, "cpu")) is None
    os.environ["LOCAL_RANK"] = "1"
    try:
        assert placement(gpu) == {"": 1}
    finally:
        del os.environ["LOCAL_RANK"]


def test_one_process_trains_on_one_gpu_and_says_how_to_use_the_others(monkeypatch):
    """transformers counts every visible GPU into args.n_gpu and wraps the model in nn.DataParallel: the batch grows
    silently. The GPUs are faked (none here); the TrainingArguments are real."""
    import torch
    from transformers import TrainingArguments

    from quickft.hardware import Choice
    from quickft.pipeline import one_gpu_per_process
    from quickft.summary import gpu_notes

    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
    assert args.n_gpu in (0, 1)
    args._n_gpu = 4  # what _setup_devices computes on a 4-GPU machine
    one_gpu_per_process(args)
    assert args.n_gpu == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    (note,) = gpu_notes(Choice("peft", "", "bf16", False, "cuda"))
    assert "trains on GPU 0" in note and "--gpus 4" in note
    assert gpu_notes(Choice("peft", "", "fp32", False, "cpu")) == []


def test_answering_test_cases_during_training_leaves_unsloths_checkpointing_to_unsloth(tiny_model_dir):
    """Unsloth's generate (GPU path; its CPU mode keeps the library's) switches gradient checkpointing off for
    inference and back on only for a model it finds training. quickft must hand it the model still training: after
    model.eval() checkpointing would stay off for the rest of the run while backend.json says it is on. The wrapper
    is stood in for by one with Unsloth's contract (FastLanguageModel keeps the original as _old_generate)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quickft.generation import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = []
    model._old_generate = model.generate

    def unsloth_like_generate(*args, **kwargs):
        seen.append(model.training)  # Unsloth: restore_training_mode = self.training
        model.eval()  # for_inference
        return model._old_generate(*args, **kwargs)

    model.generate = unsloth_like_generate
    model.train()
    generate(model, tokenizer, ["Pregunta: 1 + 1\nRespuesta: "], max_new_tokens=2)
    assert seen == [True] and model.training
    del model._old_generate  # a plain model is put in eval mode for generation (dropout off), then back
    seen.clear()
    model.generate = lambda *a, **k: (seen.append(model.training), model._old_generate_plain(*a, **k))[1]
    model._old_generate_plain = type(model).generate.__get__(model)
    generate(model, tokenizer, ["Pregunta: 1 + 1\nRespuesta: "], max_new_tokens=2)
    assert seen == [False] and model.training


def test_qlora_keeps_the_frozen_embedding_and_head_in_the_compute_dtype(tmp_path, tiny_model_dir):
    """Phi-2 has an untied output head: PEFT's kbit preparation would hold it and the embedding in fp32 (+0.5 GiB
    on a 4 GB card). A tiny untied Llama in real bitsandbytes 4-bit, bf16 compute (which runs on CPU too)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from quickft.backends import load_peft
    from quickft.hardware import Choice
    from quickft.recipe import Data, Recipe

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(tmp_path / "untied")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
        tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "untied")
    recipe = Recipe(model=str(tmp_path / "untied"), data=Data(path="unused"), mode="qlora", gradient_checkpointing=True)
    loaded = load_peft(recipe, Choice("peft", "", "bf16", True, "cpu"), str(tmp_path / "untied"), local=True)
    model = loaded.model
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())


def test_4bit_layers_compute_in_the_compute_dtype_on_any_cpu(tmp_path, tiny_model_dir):
    """On a CPU with AVX512-BF16 bitsandbytes answers an eval-mode, no-grad 4-bit forward with a bf16 kernel whatever
    the compute dtype: chat and export's check would see other logits than training. With quickft's load the
    no-grad eval forward equals the forward with gradients (which never takes that kernel), on every CPU."""
    from quickft.backends import load_peft
    from quickft.hardware import Choice
    from quickft.recipe import Data, Recipe

    recipe = Recipe(model=str(tiny_model_dir), data=Data(path="unused"), mode="qlora")
    model = load_peft(recipe, Choice("peft", "", "fp32", True, "cpu"), str(tiny_model_dir), local=True).model
    model.eval()
    ids = torch.tensor([[5, 17, 42, 9, 33, 2]])
    with torch.enable_grad():
        reference = model(input_ids=ids).logits.detach()
    with torch.no_grad():
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert (first - reference).abs().max() < 1e-5 and (second - reference).abs().max() < 1e-5
