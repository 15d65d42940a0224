"""Load model + tokenizer for training or inference: Unsloth's FastLanguageModel, or plain transformers + PEFT.

Two functions with the same return shape, no class hierarchy. `import unsloth` happens only inside
`load_unsloth`, and the caller (train.py / chat.py) calls `import_unsloth_first()` before anything imports
transformers, trl or peft, because Unsloth patches them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from quickft import cpu, cpu_speed, distributed
from quickft.cpu_speed import keep_lora_sums_fp32, matmul_peak
from quickft.data.chat_template import CHAT_TEMPLATES
from quickft.errors import UserError, is_out_of_memory
from quickft.hardware import Choice, cpu_precision_plan, pick_cpu_precision
from quickft.noise import hide_known_harmless
from quickft.recipe import Recipe
from quickft.stack import require_runnable

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class Loaded:
    model: object
    tokenizer: object
    choice: Choice


def private_by_default(local: bool) -> None:
    """No usage statistics, and no hub look-ups at all when the model is on local disk. Call before HF imports."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if local:
        os.environ["HF_HUB_OFFLINE"] = "1"


def import_unsloth_first() -> str | None:
    """Import unsloth before transformers/trl/peft. Returns the import error as text, or None if it imported."""
    try:
        import unsloth  # noqa: F401  (patches transformers, trl and peft for this process)
    except Exception as e:  # unsloth raises NotImplementedError, ImportError, RuntimeError... on unusable setups
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def choose_backend(recipe: Recipe, *, strict: bool = True) -> Choice:
    """Backend, precision and 4-bit for this recipe on this machine; every verb that loads a model calls this.

    First the stack check (quickft.stack): a torch or bitsandbytes without kernels for this GPU stops here, with exit
    2 and the install command, before anything loads. Then the choice; when it is Unsloth, unsloth is imported (first,
    since it patches transformers, trl and peft), and a failed import falls back to PEFT with the reason.
    `strict=False` (chat, eval) also falls back when the recipe asked for Unsloth and it cannot run here.
    """
    from dataclasses import asdict

    from quickft.hardware import choose, unsloth_status

    hw, stack, verdict = require_runnable(needs_4bit=recipe.mode == "qlora")
    status = unsloth_status()
    options = {"mode": recipe.mode, "precision": recipe.precision, "processes": distributed.world_size()}
    try:
        choice = choose(hw, status, requested=recipe.backend, **options)
    except ValueError as e:
        if strict:
            hint = "use --backend peft, or run on an NVIDIA GPU with compute capability ≥ 7.0"
            raise UserError(str(e), hint=hint) from None
        choice = choose(hw, status, requested="auto", **options)
    if choice.backend == "unsloth" and (error := import_unsloth_first()):
        status = replace(status, import_error=error)
        if recipe.backend == "unsloth" and strict:
            raise UserError(f"--backend unsloth: unsloth failed to import: {error}", hint="use --backend peft")
        choice = choose(hw, status, requested="auto", **options)
    return replace(choice, stack=asdict(stack) | {"verdict": verdict.status, "why": verdict.reason})


def _frozen_embeddings_in(model, dtype) -> None:
    """prepare_model_for_kbit_training upcasts every 16-bit weight left unquantized to fp32, the embedding and an
    untied output head included: +0.5 GiB for Phi-2 on a card whose whole run peaks near 3 GB. LoRA trains neither;
    they go back to the compute dtype (the norms it upcasts stay fp32, where its stability reason holds)."""
    for module in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
        if not any(p.requires_grad for p in module.parameters()):
            module.to(dtype)


def placement(choice: Choice) -> dict | None:
    """Where the weights go, as transformers' device_map: on a GPU each process's own (LOCAL_RANK under torchrun, the
    only one otherwise), on MPS the Apple GPU; None on the CPU, where transformers puts them anyway."""
    if choice.device == "cuda":
        return {"": distributed.local_rank()}
    if choice.device == "mps":
        return {"": "mps"}
    return None


def load_peft(recipe: Recipe, choice: Choice, model_path: str, *, local: bool, for_training: bool = True) -> Loaded:
    """transformers + (bitsandbytes 4-bit) + PEFT LoRA, or the full model for mode='full'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(recipe.seed)  # the same LoRA initialization on every run of a recipe
    dtype = getattr(torch, DTYPES[choice.precision])
    kwargs = {"trust_remote_code": recipe.trust_remote_code, "local_files_only": local}
    if choice.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = placement(choice) or {"": "cpu"}
    elif placement(choice):  # transformers loads to the CPU without one: chat, eval and export would run there
        kwargs["device_map"] = placement(choice)
    # full fine-tuning keeps fp32 master weights and lets mixed precision cast; LoRA loads the frozen base in the
    # compute dtype (PEFT keeps the small adapters in fp32)
    kwargs["dtype"] = torch.float32 if recipe.mode == "full" else dtype
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, trust_remote_code=recipe.trust_remote_code, local_files_only=local
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if choice.load_in_4bit:
        exact_cpu_4bit(model, dtype)
    _fix_pad_token(model, tokenizer)
    if for_training and (recipe.data.batching == "packed" or choice.device == "cpu"):
        use_quickft_sdpa(model)
    if not for_training or recipe.mode == "full":
        if for_training and recipe.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return Loaded(model, tokenizer, choice)

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if choice.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
        _frozen_embeddings_in(model, dtype)
    elif recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    config = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,  # "all-linear": PEFT's (and Unsloth's) own
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if choice.device == "cpu" and choice.precision == "bf16":  # as settle_cpu_precision trains a bf16 pick
        keep_lora_sums_fp32(model)
    return Loaded(model, tokenizer, choice)


def load_unsloth(recipe: Recipe, choice: Choice, model_path: str, *, local: bool, for_training: bool = True) -> Loaded:
    """Unsloth's FastLanguageModel: its own 4-bit loading, LoRA and gradient checkpointing.

    Unsloth's defaults differ from the recipe's: it turns gradient checkpointing on, and a full fine-tune trains in
    pure 16-bit. Both are passed explicitly, so the model trains as the recipe says (model_facts() reads it back).
    """
    import torch
    from unsloth import FastLanguageModel

    dtype = getattr(torch, DTYPES[choice.precision])
    full = recipe.mode == "full" and for_training
    checkpointing = "unsloth" if recipe.gradient_checkpointing and for_training else False
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path,
        max_seq_length=recipe.max_seq_length,
        dtype=torch.float32 if recipe.mode == "full" and choice.device == "cpu" else dtype,
        load_in_4bit=choice.load_in_4bit,
        full_finetuning=full,
        use_gradient_checkpointing=checkpointing,
        use_exact_model_name=True,  # load what the recipe names, never a swapped-in pre-quantized repo
        trust_remote_code=recipe.trust_remote_code,
        local_files_only=local,
        # on a GPU, fp32 master weights under autocast as on the PEFT path, not Unsloth's pure 16-bit full fine-tune
        # (its CPU mode loads fp32 already and does not take this argument)
        **({"float32_mixed_precision": True} if full and choice.device == "cuda" else {}),
    )
    if choice.load_in_4bit:
        exact_cpu_4bit(model, dtype)
    _fix_pad_token(model, tokenizer)
    if for_training and recipe.mode != "full":
        model = FastLanguageModel.get_peft_model(
            model,
            r=recipe.lora.r,
            lora_alpha=recipe.lora.alpha,
            lora_dropout=recipe.lora.dropout,
            target_modules=recipe.lora.target_modules,  # "all-linear": PEFT's (and Unsloth's) own
            bias="none",
            use_gradient_checkpointing=checkpointing,
            random_state=recipe.seed,
        )
    if not for_training:
        FastLanguageModel.for_inference(model)
    return Loaded(model, tokenizer, choice)


def model_facts(model) -> dict:
    """What the loaded model really is, read from it (not from the recipe): weight and trainable dtypes,
    4-bit layers, gradient checkpointing. Libraries change these behind the recipe's back."""
    from collections import Counter

    weights, trainable = Counter(), Counter()
    for p in model.parameters():
        weights[str(p.dtype).removeprefix("torch.")] += p.numel()
        if p.requires_grad:
            trainable[str(p.dtype).removeprefix("torch.")] += p.numel()
    four_bit = sum(1 for module in model.modules() if type(module).__name__ == "Linear4bit")
    return {
        "weight_dtypes": dict(weights.most_common()),
        "trainable_dtype": trainable.most_common(1)[0][0] if trainable else None,
        "linear4bit_layers": four_bit,
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
    }


def quiet_libraries() -> None:
    """quickft's own display replaces the libraries' progress bars; real warnings still come through."""
    hide_known_harmless()  # import-time chatter that says nothing about this run (the CLI installs it first)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()


def cap_gpu_memory(hw) -> dict | None:
    """On an emulated card (hardware.emulate, QUICKFT_GPU_MEMORY_GB / QUICKFT_GPU_CAPABILITY): cap torch's memory so
    that it and this process's CUDA context fit in the emulated card, as they share a real one, and turn torch's
    flash attention off where the emulated card has none (below compute capability 8.0; its memory-efficient kernel
    runs instead, as on a T4 or a GTX 1050 Ti). Returns what was set; None on a card that emulates nothing."""
    if hw is None or not hw.emulated:
        return None
    import torch

    done = {}
    if hw.vram_bytes < hw.physical_vram_bytes:
        free, total = torch.cuda.mem_get_info()  # creates this process's CUDA context first
        fraction, outside = memory_fraction(hw.vram_bytes, total, free, torch.cuda.memory_reserved())
        torch.cuda.set_per_process_memory_fraction(fraction)
        done |= {"fraction": fraction, "outside_torch_bytes": outside}
    if hw.capability < (8, 0):
        torch.backends.cuda.enable_flash_sdp(False)
        done["flash_sdp"] = False
    return done


def memory_fraction(card_bytes: int, total: int, free: int, reserved: int) -> tuple[float, int]:
    """(torch's per-process memory fraction, bytes this process holds outside torch's allocator) for an emulated
    card of `card_bytes` on a real one of `total`: the fraction caps torch's allocator only, and on a real small card
    the CUDA context (and cuBLAS's, NCCL's, other libraries' memory) comes out of the same total. What the GPU holds
    beyond torch's reservation counts as this process's: on a GPU shared with other processes theirs counts too,
    which errs small."""
    outside = max(0, total - free - reserved)
    return max(0.0, min(1.0, (card_bytes - outside) / total)), outside


def load(recipe: Recipe, choice: Choice, model_path: str, *, local: bool, for_training: bool = True) -> Loaded:
    """Load with the chosen backend; a model that can't be found becomes a UserError that says what to do."""
    quiet_libraries()
    if choice.device == "cuda":
        cap_gpu_memory(choice.hardware)
    loader = load_unsloth if choice.backend == "unsloth" else load_peft
    try:
        return loader(recipe, choice, model_path, local=local, for_training=for_training)
    except OSError as e:
        if local:
            raise UserError(f"cannot load the model from {model_path}: {e}", hint="check the model directory") from e
        raise UserError(
            f"cannot load {model_path!r}: {str(e).splitlines()[0]}",
            hint="with no internet or hub, download the model elsewhere and point `model` at its local directory",
        ) from e
    except UserError:
        raise
    except Exception as e:  # Unsloth refuses this model: NotImplementedError, RuntimeError, ValueError ...
        if choice.backend != "unsloth" or is_out_of_memory(e):
            raise
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if recipe.backend == "unsloth":
            raise UserError(f"Unsloth cannot load this model: {why}", hint="use --backend peft") from e
        from quickft.hardware import choose, unsloth_status

        fallback = choose(
            choice.hardware, unsloth_status(), mode=recipe.mode, precision=recipe.precision, unsloth_refuses=why
        )
        fallback = replace(fallback, stack=choice.stack)
        return load_peft(recipe, fallback, model_path, local=local, for_training=for_training)  # .choice says why


def prepare_tokenizer(tokenizer, recipe: Recipe, *, training: bool = False) -> None:
    """The tokenizer as training uses it: a pad token (padding is masked out of attention and loss, so any id works;
    eos is the usual choice), and the recipe's chat template. Training sets the recipe's template over the
    tokenizer's own; chat, eval and export load a saved run's tokenizer, which has it already, and set it only
    where there is none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if recipe.data.chat_template and (training or not tokenizer.chat_template):
        tokenizer.chat_template = CHAT_TEMPLATES.get(recipe.data.chat_template, recipe.data.chat_template)


def exact_cpu_4bit(model, compute_dtype) -> None:
    """Keep bitsandbytes' 4-bit layers in their compute dtype on the CPU. On a CPU with AVX512-BF16, bitsandbytes
    (0.49+) repacks each Linear4bit at its first eval-mode, no-grad forward and runs a fused kernel that casts the
    input and scales to bfloat16 whatever bnb_4bit_compute_dtype says: chat, eval and export's check would then
    compute in bf16 what training computed in fp32 (and what the de-quantized merged model computes). The flag
    only matters on the CPU."""
    import torch

    if compute_dtype == torch.bfloat16:
        return  # the fused kernel's own dtype: nothing lost
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes.nn.Linear4bit
            module.support_avx512bf16_for_cpu = False


def _fix_pad_token(model, tokenizer) -> None:
    if tokenizer.pad_token is None:
        # padding is masked out of attention and loss, so any id works; eos is the usual choice
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def settle_cpu_precision(recipe: Recipe, choice: Choice, model, batch: dict | None, *, previous: str | None = None):
    """precision=auto on a CPU with bf16 matrix instructions: time `batch` (a micro-batch of the run's own shape)
    forward and backward through the loaded model in fp32 and in bf16 (quickft.cpu_speed.time_passes), and train in the
    faster (hardware.pick_cpu_precision). bf16 makes a LoRA run train in bf16 from now on (cpu_speed.lora_in_bf16:
    its frozen weights cast as loading in bf16 would, the adapter and the LoRA sums in fp32). Elsewhere the precision
    stands, with the reason (hardware.cpu_precision_plan). `previous`: the precision an interrupted run trained in,
    which it goes on in (no probe). Also sets torch's threads to the usable physical cores where quickft set
    OMP_NUM_THREADS after torch was already loaded. Returns (choice, the function that puts the model back in fp32
    for answering, or None)."""
    import torch

    found = choice.hardware.cpu if choice.hardware and choice.hardware.cpu else cpu.read_cpu()
    openmp = cpu.openmp_state()
    if openmp.torch_was_loaded and "OMP_NUM_THREADS" in openmp.set_by_quickft:
        torch.set_num_threads(int(openmp.threads))
    record = {"threads": torch.get_num_threads()}
    probe, why = cpu_precision_plan(
        found,
        requested=recipe.precision,
        mode=recipe.mode,
        backend=choice.backend,
        processes=distributed.world_size(),
        weights=sum(p.numel() for p in model.parameters()),
    )
    precision, restore = choice.precision, None
    if probe and previous:
        precision, why = previous, f"{previous}, as this run trained before it was interrupted"
    elif probe and batch is not None:
        record["probe"] = cpu_speed.time_passes(model, batch, cast=recipe.mode != "full")
        precision, why = pick_cpu_precision(found, record["probe"]["fp32_s"], record["probe"]["bf16_s"])
    if probe and precision == "bf16" and recipe.mode != "full":
        restore = cpu_speed.lora_in_bf16(model)
    return replace(choice, precision=precision, precision_reason=why, cpu=record), restore


CPU_PEAK_S = 0.3
"""Seconds of the matrix-multiply probe a CPU run spends for its MFU (doctor's is longer)."""


def measure_cpu_peak(choice: Choice) -> Choice:
    """The choice with this CPU's matrix-multiply peak in the precision trained: MFU's denominator on a CPU."""
    dtype = "bfloat16" if choice.precision == "bf16" else "float32"
    return replace(choice, cpu=(choice.cpu or {}) | {"peak": matmul_peak(dtype, seconds=CPU_PEAK_S)})


SDPA = "quickft_sdpa"
"""The attention quickft registers for training on a CPU and for packed rows: torch's SDPA, with two changes."""


def quickft_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, with two changes.

    Packed (padding-free) rows, one row whose position ids restart at 0 where each example starts: each example is
    attended to alone. transformers builds a block-diagonal mask for such a row, and SDPA computes all of it, every
    example against every other, masked: with ~85-token examples in 256-token rows of 4, 12 times the attention the
    examples need, a third of a bf16 SmolLM2 step on a CPU (docs/benchmarks.md). Each example alone, causal, computes
    exactly what the mask lets through.

    Under bf16 autocast on a CPU, attention runs in fp32: torch's CPU attention is slower in bf16 than in fp32 (SmolLM2's
    shapes, forward and backward: 2.6 ms vs 1.5 ms), and the LoRA sums hand it fp32 queries, keys and values anyway.

    Anything else (padded batches without autocast, generation with a cache) is SDPA unchanged."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            query, key, value = (t.float() for t in (query, key, value))
            return quickft_sdpa(module, query, key, value, attention_mask, **kwargs)
    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    if position_ids is None or query.shape[0] != 1 or key.shape[2] != length or position_ids.shape[-1] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    pieces = []
    for begin, end in zip(starts, [*starts[1:], length], strict=True):
        one = (t[:, :, begin:end] for t in (query, key, value))
        pieces.append(sdpa_attention_forward(module, *one, None, **kwargs | {"is_causal": True})[0])
    return torch.cat(pieces, dim=1), None  # (batch, sequence, heads, head_dim), as sdpa_attention_forward returns


def use_quickft_sdpa(model) -> bool:
    """Train a model that attends with SDPA through quickft_sdpa. Returns whether it was set."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(SDPA, quickft_sdpa)
    AttentionMaskInterface.register(SDPA, sdpa_mask)
    base.set_attn_implementation(SDPA)
    return True
