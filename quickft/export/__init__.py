"""`quickft export RUN_DIR`: the fine-tuned model out of quickft, proven by loading it back.

  --to merged     base + adapter merged into a plain Hugging Face directory (no PEFT, no quickft needed to load it)
  --to gguf       that merged model converted by llama.cpp's converter, for llama.cpp / LM Studio
  --to gguf-lora  the LoRA adapter alone as a GGUF LoRA (llama.cpp's LoRA converter), which llama.cpp and Ollama
                  apply on top of the base's GGUF: for a run that trained from a GGUF, the user's own file
  --to ollama     the GGUF plus a Modelfile whose template and stop tokens are the run's own framing; for a LoRA
                  run that trained from a GGUF, `FROM` that GGUF (or Ollama model) plus `ADAPTER`: nothing large

Steps: check everything cheap (run, form, quant, converter, room on disk), answer the run's held-out prompts with
the adapter exactly as `quickft chat` does, merge, answer them again with the merged model loaded fresh from disk,
then convert and answer them once more through llama.cpp. export.json records what was done, sizes, and the check.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from quickft import rundir
from quickft.backends import prepare_tokenizer, quiet_libraries
from quickft.errors import UserError, is_out_of_memory
from quickft.export.llamacpp import (
    convert,
    find_converter,
    find_lora_converter,
    find_quantizer,
    has_llama_cpp_python,
    install_command,
    quantize,
)
from quickft.export.loadback import (
    answers_of_dir,
    answers_of_run,
    check_adapter,
    check_gguf,
    check_metadata,
    compare,
    held_out_prompts,
    merge_rounding,
)
from quickft.models import GGUF, content_hash, locate, run_base_model
from quickft.recipe import Recipe, recipe_from_dict
from quickft.report import Reporter
from quickft.session import chat_style, saved_dtype

FORMS = ("merged", "gguf", "gguf-lora", "ollama")
QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
ADAPTER_QUANTS = ("f32", "f16", "q8_0")
"""What llama.cpp's LoRA converter writes (an adapter is small: f16 by default, as llama.cpp's own LoRA GGUFs)."""
DEFAULT_QUANT = {"gguf": "f16", "ollama": "q8_0"}
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.6}  # q8_0: 32 weights + a 16-bit scale
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def main(
    run_dir: str,
    *,
    to: str = "merged",
    quant: str | None = None,
    out: str | None = None,
    dtype: str = "auto",
    check: bool = True,
    as_json: bool = False,
) -> int:
    """Export a finished run; returns 0, or 1 when the loaded-back model does not answer as the run does."""
    err = Console(stderr=True, soft_wrap=True)
    plan = make_plan(run_dir, to=to, quant=quant, out=out, dtype=dtype)
    err.print(
        f"[dim]{escape(plan['say'])}[/dim]",
        highlight=False,
    )
    record = export(plan, check=check, err=err)
    if as_json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        print_record(record, Console(soft_wrap=True))
    return 0 if record["check"].get("ok", True) else 1


# ---------------------------------------------------------------------------------------------- the plan


def make_plan(run_dir: str, *, to: str, quant: str | None, out: str | None, dtype: str) -> dict:
    """Everything checked before any slow work: the run, the form, the quant, the converter, memory and disk."""
    if to not in FORMS:
        raise UserError(f"--to {to}: unknown form", hint=f"use one of {', '.join(FORMS)}")
    if quant is not None and to == "merged":
        raise UserError("--quant is for --to gguf, gguf-lora or ollama; a merged model keeps 16-bit weights")
    if dtype not in ("auto", *DTYPE_BYTES):
        raise UserError(f"--dtype {dtype}: unknown", hint="use auto, float16, bfloat16 or float32")
    run = rundir.open_run(run_dir)  # not a run, or not finished: exit 2 with the reason
    recipe = recipe_from_dict(run["recipe"])
    run_path = Path(run_dir)
    gguf_base = (run.get("backend") or {}).get("gguf")  # the GGUF the run was de-quantized from, if any
    if to == "gguf-lora" and recipe.mode == "full":
        raise UserError(
            f"--to gguf-lora: {run_dir} is a full fine-tune, which has no adapter",
            hint="--to gguf (the whole model), or --to ollama",
        )
    adapter = to == "gguf-lora" or (to == "ollama" and gguf_base is not None and recipe.mode != "full")
    quant = quant or ("f16" if adapter else DEFAULT_QUANT.get(to))
    allowed = ADAPTER_QUANTS if adapter else QUANTS
    if quant is not None and quant not in allowed:
        what = "a GGUF LoRA adapter" if adapter else "a GGUF"
        raise UserError(f"--quant {quant}: not a quantization for {what}", hint=f"use one of {', '.join(allowed)}")
    converter = None
    if adapter:
        converter = find_lora_converter().parent
    elif to != "merged":
        converter = find_converter()
        if quant == "q4_k_m" and find_quantizer() is None:
            raise UserError(
                "--quant q4_k_m needs llama.cpp's quantizer, which is not installed (f16 and q8_0 do not)",
                hint=f"install it: {install_command()}",
            )
    out_dir = Path(out) if out else run_path / to
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(
            f"{out_dir} is not empty: an export is never overwritten",
            hint="choose another --out DIR, or delete that directory yourself",
        )
    base = None if recipe.mode == "full" else _base_path(run)
    source = run_path if recipe.mode == "full" else Path(base)
    n_weights = count_weights(source)
    base_gguf = _base_gguf(run, gguf_base) if adapter and gguf_base else None
    why_dtype = ""
    if dtype == "auto":  # the dtype the base was published in; a full fine-tune saved fp32 master weights
        dtype = saved_dtype(Path(base) if base else _published_base(run) or source)
        if dtype == "bfloat16" and (run.get("backend") or {}).get("precision") == "fp16":
            # trained in fp16: a card without bf16 (below compute capability 8.0: T4, V100, GTX 10xx), where a bf16
            # model loads slowly or not at all; the merge is in the precision the run trained in
            dtype, why_dtype = "float16", " (the run trained in fp16, on a card without bf16)"
    merged_bytes = n_weights * DTYPE_BYTES[dtype]
    gguf_bytes = int(n_weights * BYTES_PER_WEIGHT[quant]) if quant else 0
    if quant == "q4_k_m":
        gguf_bytes += n_weights * 2  # quantized from a 16-bit GGUF, removed afterwards
    disk = merged_bytes + gguf_bytes
    if adapter:  # the adapter, and (without a base GGUF to check it on) an f16 GGUF of the base, removed afterwards
        merged_bytes = 0
        disk = int(count_weights(run_path) * BYTES_PER_WEIGHT[quant]) + (0 if base_gguf else n_weights * 2)
    free = shutil.disk_usage(_existing_parent(out_dir)).free
    if free < disk * 1.05 + 2**20:
        raise UserError(
            f"not enough disk for the export: it needs about {_size(disk)} in {_existing_parent(out_dir)}, "
            f"{_size(free)} free",
            hint="free some space, or choose --out on another disk",
        )
    what = {
        "full": "the fully fine-tuned weights",
        "lora": f"{base} + the LoRA adapter",
        "qlora": f"{base} de-quantized from 4-bit (the weights the adapter trained against) + the LoRA adapter",
    }[recipe.mode]
    say = (
        f"export {run_path} to {to}{f' ({quant})' if quant else ''}: {what}, {n_weights:,} weights in {dtype}"
        f"{why_dtype}; "
        f"needs about {_size(merged_bytes)} of memory (one {dtype} copy of the model, merged layer by layer) "
        f"and {_size(disk)} of disk"
    )
    if adapter:
        on = f"the run's own base GGUF, {base_gguf['origin']}" if base_gguf else "a GGUF of the base"
        say = (
            f"export {run_path} to {to} ({quant}): the LoRA adapter as a GGUF LoRA (nothing merged, nothing large "
            f"written), for llama.cpp and Ollama to apply on {on}; checked on that GGUF with llama-cpp-python"
        )
    return {
        "run_dir": run_path,
        "recipe": recipe,
        "to": to,
        "quant": quant,
        "out_dir": out_dir,
        "base": base,
        "dtype": dtype,
        "weights": n_weights,
        "converter": converter,
        "say": say,
        "trained_on": (run.get("backend") or {}).get("device", "cpu"),
        "adapter": adapter,
        "base_gguf": base_gguf,
    }


def _base_gguf(run: dict, record: dict) -> dict:
    """The GGUF a run trained from (the file, or the Ollama model), still there and unchanged: an adapter is applied
    on exactly the weights it was trained against."""
    try:
        gguf, _ = locate(record["origin"])
    except UserError as e:
        raise UserError(
            f"{run['dir']}: the run trained from {record['origin']}, which is not available: {e.message}",
            hint="restore that GGUF (or Ollama model), or export the whole model: --to gguf",
        ) from None
    if not isinstance(gguf, GGUF) or content_hash(Path(gguf.file)) != record["sha256"]:
        raise UserError(
            f"{run['dir']}: {record['origin']} has changed since the run trained from it (its sha256 differs from "
            "backend.json's): the adapter would be applied on other weights",
            hint="restore the GGUF the run trained from, or export the whole model: --to gguf",
        )
    return {"file": gguf.file, "origin": record["origin"], "ollama": gguf.ollama.get("name")}


def _base_path(run: dict) -> str:
    """The run's base model as a local directory (a hub id only from the local cache: the export reads its files)."""
    path, local = run_base_model(run)
    if local:
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, local_files_only=True)
    except Exception:
        raise UserError(
            f"{run['dir']}: the base model {path!r} is not on this machine",
            hint="download it and set model_path in backend.json to its local directory",
        ) from None


def _published_base(run: dict) -> Path | None:
    """A full fine-tune's base model directory, if it is still on this machine (only its dtype is read)."""
    try:
        path, local = run_base_model(run)
    except UserError:
        return None
    return Path(path) if local else None


def count_weights(model_dir: Path) -> int:
    """Number of weights in a model directory, from the safetensors headers (no tensor is loaded)."""
    total = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                n = 1
                for d in info["shape"]:
                    n *= d
                total += n
    if not files:  # pytorch_model.bin only: estimate from its size, as 16-bit or 32-bit by the config
        size = sum(f.stat().st_size for f in Path(model_dir).glob("*.bin"))
        total = size // DTYPE_BYTES.get(saved_dtype(model_dir), 2)
    return total


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# ---------------------------------------------------------------------------------------------- exporting


def export(plan: dict, *, check: bool, err: Console) -> dict:
    reporter = Reporter(console=err, live=err.is_terminal)
    recipe: Recipe = plan["recipe"]
    out_dir: Path = plan["out_dir"]
    prompts = held_out_prompts(plan["run_dir"]) if check else []
    started = time.perf_counter()
    result: dict = {"check": {"prompts": len(prompts)}}
    reference = None
    if prompts:
        with reporter.phase(f"answering {len(prompts)} held-out prompts with the run, as quickft chat does"):
            reference = answers_of_run(plan["run_dir"], prompts, recipe.max_new_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan["adapter"]:
        try:
            result = export_adapter(plan, reference, result, reporter)
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)  # a half export is no export (the plan found the folder empty)
            raise
    else:
        result = export_merged(plan, prompts, reference, result, reporter, err)
    checks = [c for k, c in result["check"].items() if isinstance(c, dict) and "ok" in c]
    if checks:
        result["check"]["ok"] = all(c["ok"] for c in checks)
    record = {
        "to": plan["to"],
        "quant": plan["quant"],
        "run_dir": str(plan["run_dir"]),
        "out_dir": str(out_dir),
        "mode": recipe.mode,
        "base": plan["base"],
        "base_gguf": plan["base_gguf"],
        "weights": plan["weights"],
        "dtype": plan["dtype"],
        "dequantized_from_4bit": recipe.mode == "qlora",
        "trained_on": plan["trained_on"],
        "prompting": prompting(recipe),
        "seconds": round(time.perf_counter() - started, 2),
        "files": sorted(p.name for p in out_dir.iterdir() if p.is_file()),
        **result,
    }
    rundir.write_json(out_dir / "export.json", record)
    record["files"] = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    return record


def export_merged(plan: dict, prompts: list[str], reference, result: dict, reporter, err: Console) -> dict:
    """merged, gguf and the merged-model ollama forms: merge, load back, convert, load back again."""
    recipe: Recipe = plan["recipe"]
    out_dir: Path = plan["out_dir"]
    keep_merged = plan["to"] == "merged"
    merged_dir = out_dir if keep_merged else Path(tempfile.mkdtemp(prefix=".merged-", dir=out_dir))
    merged = False
    try:
        with reporter.phase("merging" if recipe.mode != "full" else "writing the weights"):
            merge(plan, merged_dir)
        merged = True
        result["merged"] = {"dtype": plan["dtype"], "bytes": _dir_bytes(merged_dir)}
        if prompts:
            with reporter.phase("loading the merged model back with transformers alone, answering the prompts"):
                try:
                    merged_answers = answers_of_dir(merged_dir, prompts, recipe.max_new_tokens)
                except Exception as e:
                    if not is_out_of_memory(e):
                        raise
                    merged_answers = answers_of_dir(merged_dir, prompts, recipe.max_new_tokens, device="cpu")
                    result["check"]["loaded_back_on"] = "cpu, float32 (out of GPU memory)"
            result["check"]["merged"] = compare(reference, merged_answers, rounded=merge_rounding(plan))
        if plan["to"] != "merged":
            gguf = out_dir / f"{plan['run_dir'].name}-{plan['quant']}.gguf"
            with reporter.phase(f"converting to GGUF ({plan['quant']}) with llama.cpp's converter"):
                to_gguf(merged_dir, gguf, plan["quant"], plan["converter"], name=plan["run_dir"].name)
            result["gguf"] = {"file": gguf.name, "bytes": gguf.stat().st_size, "quant": plan["quant"]}
            result["check"]["metadata"] = check_metadata(gguf, merged_dir)
            if prompts:
                if has_llama_cpp_python():
                    with reporter.phase("loading the GGUF back with llama-cpp-python, answering the prompts"):
                        result["check"]["gguf"] = check_gguf(gguf, merged_dir, prompts, merged_answers, plan)
                else:
                    result["check"]["gguf"] = {"skipped": f"llama-cpp-python is not installed: {install_command()}"}
            if plan["to"] == "ollama":
                modelfile = out_dir / "Modelfile"
                modelfile.write_text(make_modelfile(recipe, merged_dir, f"./{gguf.name}"), encoding="utf-8")
                result["ollama"] = {"modelfile": modelfile.name, "create": ollama_command(plan)}
    except BaseException as e:
        if merged and keep_merged:  # the merged model is whole: only what checks it failed
            err.print(
                f"[yellow]the merged model in {escape(str(out_dir))} is complete and kept; its check failed[/yellow]"
            )
        elif merged and isinstance(e, UserError) and _keep_merged_beside(plan, merged_dir, result, err):
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            shutil.rmtree(out_dir, ignore_errors=True)  # a half export is no export (the plan found the folder empty)
        raise
    finally:
        if not keep_merged:
            shutil.rmtree(merged_dir, ignore_errors=True)
    return result


def _keep_merged_beside(plan: dict, merged_dir: Path, result: dict, err: Console) -> bool:
    """After a conversion stopped for something the user can fix (a converter's missing module, say), the merged
    model it converted from is whole: kept as the run's merged export (RUN_DIR/merged, where `--to merged` writes),
    with its own export.json, unless that folder is taken. Returns whether it was kept."""
    target = plan["run_dir"] / "merged"
    if target.exists():
        return False
    merged_dir.rename(target)
    record = {"to": "merged", "run_dir": str(plan["run_dir"]), "out_dir": str(target), "dtype": plan["dtype"]}
    record |= {"check": {k: v for k, v in result["check"].items() if k in ("prompts", "merged")}}
    rundir.write_json(target / "export.json", record | {"kept_from": f"--to {plan['to']}, which stopped"})
    err.print(
        f"[yellow]the merged model is complete and kept in {escape(str(target))} (as --to merged writes it); "
        f"the {plan['to']} export stopped:[/yellow]"
    )
    return True


def export_adapter(plan: dict, reference: list[dict] | None, result: dict, reporter) -> dict:
    """gguf-lora and the adapter form of ollama: llama.cpp's LoRA converter on the run's adapter, checked on the
    base's GGUF with llama-cpp-python (the run's own base GGUF when it trained from one)."""
    from quickft.export.llamacpp import convert_lora  # looked up at call time: a test replaces it to cause a fault

    recipe: Recipe = plan["recipe"]
    out_dir: Path = plan["out_dir"]
    name = plan["run_dir"].name
    adapter = out_dir / f"{name}-lora-{plan['quant']}.gguf"
    with reporter.phase(f"converting the adapter to a GGUF LoRA ({plan['quant']}) with llama.cpp's LoRA converter"):
        convert_lora(plan["run_dir"], Path(plan["base"]), adapter, plan["quant"])
    result["gguf_lora"] = {"file": adapter.name, "bytes": adapter.stat().st_size, "quant": plan["quant"]}
    if reference is not None:
        if not has_llama_cpp_python():
            result["check"]["gguf_lora"] = {"skipped": f"llama-cpp-python is not installed: {install_command()}"}
        else:
            base_gguf = Path(plan["base_gguf"]["file"]) if plan["base_gguf"] else out_dir / f".{name}-base-f16.gguf"
            try:
                if not plan["base_gguf"]:
                    with reporter.phase("converting the base to a GGUF (f16) to check the adapter on"):
                        convert(Path(plan["base"]), base_gguf, "f16", converter=plan["converter"], name=name)
                with reporter.phase("applying the GGUF LoRA on the base GGUF with llama-cpp-python"):
                    result["check"]["gguf_lora"] = check_adapter(base_gguf, adapter, reference)
            finally:
                if not plan["base_gguf"]:
                    base_gguf.unlink(missing_ok=True)
            result["check"]["gguf_lora"]["base"] = plan["base_gguf"]["origin"] if plan["base_gguf"] else "f16"
    if plan["to"] == "ollama":
        base = plan["base_gguf"]
        modelfile = out_dir / "Modelfile"
        source = base["ollama"] or base["file"]
        text = make_modelfile(recipe, plan["run_dir"], source, adapter=f"./{adapter.name}", gguf_template=True)
        modelfile.write_text(text, encoding="utf-8")
        result["ollama"] = {"modelfile": modelfile.name, "create": ollama_command(plan), "from": source}
    return result


def dequantization_note(trained_on: str) -> str:
    """What a QLoRA export merged into, and where it was de-quantized (always on the CPU: see merge)."""
    note = "QLoRA: merged into the base de-quantized from 4-bit (on the CPU), never into 4-bit weights"
    if trained_on == "cuda":
        note += (
            "; training de-quantized with bitsandbytes' CUDA kernel, which may round a weight one 16-bit step apart "
            "from its CPU kernel: the check compares the merged model's answers with the adapter's"
        )
    return note


def merge(plan: dict, target: Path) -> None:
    """Write the merged model (weights, config, generation config, tokenizer with its chat template) to `target`.

    One copy of the model in memory: the base is loaded in the output dtype and each LoRA layer is merged into it in
    place (PEFT's merge_and_unload); a QLoRA base is loaded in 4-bit as in training and de-quantized layer by layer
    (transformers' dequantize), so the merge adds the adapter to the weights it was trained against. Shards of one
    layer bound what saving copies at once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    recipe: Recipe = plan["recipe"]
    run_dir: Path = plan["run_dir"]
    dtype = getattr(torch, plan["dtype"])
    local = {"local_files_only": True, "trust_remote_code": recipe.trust_remote_code}
    if recipe.mode == "full":
        model = AutoModelForCausalLM.from_pretrained(run_dir, dtype=dtype, **local)
    else:
        kwargs = {"dtype": dtype}
        if recipe.mode == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(  # as backends.load_peft quantized it for training
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            # on the CPU even where a GPU is: the de-quantized model is the 16-bit size a small card lacks (the
            # report says when training ran bitsandbytes' CUDA kernel instead: dequantization_note)
            kwargs["device_map"] = {"": "cpu"}
        model = AutoModelForCausalLM.from_pretrained(plan["base"], **kwargs, **local)
        if recipe.mode == "qlora":
            model = model.dequantize()
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, run_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    prepare_tokenizer(tokenizer, recipe)
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # where generation stops: what training taught
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.save_pretrained(target, max_shard_size=largest_layer_bytes(model))
    tokenizer.save_pretrained(target)
    del model
    gc.collect()


def largest_layer_bytes(model) -> int:
    """The bytes of the model's largest layer (`...layers.N.`, or a tensor outside the layers): saving writes shards
    of at most this size, and safetensors holds one shard's bytes at a time, so saving adds at most one layer."""
    import re
    from collections import Counter

    layers = Counter()
    for name, tensor in model.state_dict().items():
        match = re.match(r"(.*?\.\d+)\.", name)
        layers[match.group(1) if match else name] += tensor.numel() * tensor.element_size()
    return max(layers.values())


def to_gguf(merged_dir: Path, gguf: Path, quant: str, converter: Path, *, name: str) -> None:
    """The converter writes f32, f16 and q8_0 itself; k-quants are quantized from its f16."""
    if quant != "q4_k_m":
        convert(merged_dir, gguf, quant, converter=converter, name=name)
        return
    f16 = gguf.with_name(gguf.stem + ".f16-tmp.gguf")
    try:
        convert(merged_dir, f16, "f16", converter=converter, name=name)
        quantize(f16, gguf, quant)
    finally:
        f16.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- ollama


def prompting(recipe: Recipe) -> dict:
    """How the exported model expects its input: the run's framing, for people and for the Modelfile."""

    style = chat_style(recipe)
    if style == "qa":
        return {"style": "qa", "prompt_template": recipe.data.prompt_template}
    return {"style": style}


def make_modelfile(
    recipe: Recipe, tokenizer_dir: Path, source: str, *, adapter: str | None = None, gguf_template: bool = False
) -> str:
    """An Ollama Modelfile: FROM the GGUF (a file, or an Ollama model), the adapter on it when there is one, the
    run's framing as TEMPLATE, its end tokens as stops. `gguf_template`: a chat run on the base GGUF's own template
    leaves it to Ollama, which reads it from the GGUF (or the Ollama model it comes from)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    style = chat_style(recipe)
    stops = [tokenizer.eos_token]
    lines = [f"# Made by quickft from {recipe.name}: ollama create {recipe.name} -f Modelfile", f"FROM {source}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    if style == "chat" and gguf_template and recipe.data.chat_template is None:
        template = None  # trained on the base GGUF's own template
        lines.append("# chat template: the base GGUF's own (the run trained on it)")
        if "<|im_end|>" in (tokenizer.chat_template or ""):
            stops.append("<|im_end|>")
    elif style == "qa":
        before, _, after = recipe.data.prompt_template.partition("{prompt}")
        template = _go_literal(before) + "{{ .Prompt }}" + _go_literal(after)
    elif style == "completion":
        template = "{{ .Prompt }}"
    elif "<|im_start|>" in (tokenizer.chat_template or ""):
        template = CHATML_GO
        stops.append("<|im_end|>")
    else:
        template = None  # Ollama reads the chat template the GGUF carries
        lines.append("# chat template: the one in the GGUF (tokenizer.chat_template)")
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    temperature = recipe.temperature if recipe.temperature is not None else (0.7 if style == "chat" else 0.0)
    lines.append(f"PARAMETER temperature {temperature}")
    if temperature:
        lines.append(f"PARAMETER top_p {recipe.top_p}")
    lines.append(f"PARAMETER num_predict {recipe.max_new_tokens}")
    return "\n".join(lines) + "\n"


CHATML_GO = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
"""quickft's ChatML (data.chat_template.CHATML) as an Ollama (Go) template."""


def _go_literal(text: str) -> str:
    """Text as it must appear in a Go template: `{{` would start an action."""
    if '"""' in text:
        raise UserError(f'the prompt template {text!r} contains """, which a Modelfile cannot quote')
    return text.replace("{{", '{{ "{{" }}')


def ollama_command(plan: dict) -> str:
    return (
        f"cd {plan['out_dir']} && ollama create {plan['recipe'].name} -f Modelfile && ollama run {plan['recipe'].name}"
    )


# ---------------------------------------------------------------------------------------------- printing


def print_record(record: dict, console: Console) -> None:
    console.print(f"[bold]exported[/bold] {escape(record['run_dir'])} → {escape(record['out_dir'])} ({record['to']})")
    merged = record.get("merged", {})
    if record["to"] == "merged":
        console.print(f"  merged model: {record['weights']:,} weights in {record['dtype']}, {_size(merged['bytes'])}")
    if "gguf" in record:
        g = record["gguf"]
        console.print(f"  GGUF: {escape(g['file'])} ({g['quant']}, {_size(g['bytes'])})")
    if "gguf_lora" in record:
        g = record["gguf_lora"]
        on = record["base_gguf"]["origin"] if record.get("base_gguf") else "a GGUF of the base model"
        console.print(f"  GGUF LoRA: {escape(g['file'])} ({g['quant']}, {_size(g['bytes'])}), to apply on {escape(on)}")
    if record["dequantized_from_4bit"]:
        console.print(f"  {dequantization_note(record.get('trained_on', 'cpu'))}")
    check = record["check"]
    for name, label in (("merged", "merged model vs the run"), ("gguf", "GGUF (llama.cpp) vs merged model")):
        c = check.get(name)
        if not c:
            continue
        if "skipped" in c:
            console.print(f"  check, {label}: skipped ({escape(c['skipped'])})")
            continue
        mark = "[green]✓[/green]" if c["ok"] else "[red]✗[/red]"
        if c.get("error"):
            console.print(f"  {mark} check, {label}: {escape(c['error'])}")
            continue
        console.print(
            f"  {mark} check, {label}: {c['identical']}/{c['of']} greedy answers token-for-token identical"
            + (f", prompts tokenized identically {c['prompt_tokens_identical']}/{c['of']}" if name == "gguf" else "")
            + (
                f" [dim](asked: {escape(c['rule'])})[/dim]"
                if c["rule"] != "every answer token-for-token the same"
                else ""
            )
        )
        if c.get("first_difference") and not c["ok"]:
            console.print(f"    first difference: {escape(json.dumps(c['first_difference'], ensure_ascii=False))}")
    c = check.get("gguf_lora")
    if c and "skipped" in c:
        console.print(f"  check, GGUF LoRA: skipped ({escape(c['skipped'])})")
    elif c:
        mark = "[green]✓[/green]" if c["ok"] else "[red]✗[/red]"
        on = "the run's base GGUF" if record.get("base_gguf") else "an f16 GGUF of the base"
        if c.get("error"):
            console.print(f"  {mark} check, GGUF LoRA on {on}: {escape(c['error'])}")
        else:
            console.print(
                f"  {mark} check, GGUF LoRA on {on} (llama.cpp) vs the run: llama.cpp's next token is the run's at "
                f"{c['agreement']:.1%} of {c['positions']:,} answer positions (the base alone: "
                f"{c['agreement_without_adapter']:.1%}), prompts tokenized identically "
                f"{c['prompt_tokens_identical']}/{c['of']} [dim](asked: {escape(c['rule'])})[/dim]"
            )
    if "metadata" in check:
        m = check["metadata"]
        mark = "[green]✓[/green]" if m["ok"] else "[red]✗[/red]"
        console.print(
            f"  {mark} GGUF metadata: EOS {m['eos_token_id']}, BOS {m['bos_token_id']}, pad {m['padding_token_id']}, "
            f"pre-tokenizer {m['pre_tokenizer']}, chat template {'yes' if m['has_chat_template'] else 'none'}"
        )
        for problem in m["problems"]:
            console.print(f"    [red]{escape(problem)}[/red]")
    if not check.get("prompts"):
        console.print("  check: no held-out prompts in the run (samples.jsonl), or --no-check: not loaded back")
    p = record["prompting"]
    if p["style"] == "qa":
        console.print(f"  prompt it as in training: {escape(repr(p['prompt_template']))}")
    if "ollama" in record:
        console.print(f"  next: {escape(record['ollama']['create'])}")
    elif record["to"] == "merged":
        console.print(
            f"  next: AutoModelForCausalLM.from_pretrained({escape(repr(record['out_dir']))}) — no PEFT, no quickft"
        )
    console.print(f"  files: {escape(', '.join(record['files']))}")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
