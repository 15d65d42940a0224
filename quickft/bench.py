"""`quickft bench RECIPE`: Unsloth vs the plain PEFT baseline (and switches that isolate the difference), measured
side by side, each variant in its own fresh process.

Unsloth patches transformers, trl and peft when imported, so a baseline sharing its process would not be a baseline.
The parent process never imports unsloth, and torch only to check that the stack runs here (quickft.stack): it spawns
`worker` once per variant and repeat, then compares the rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quickft import methods, metrics, rundir
from quickft.backends import choose_backend, load, model_facts, private_by_default, quiet_libraries
from quickft.errors import UserError
from quickft.metrics import TokenCounter
from quickft.models import dense_dtype
from quickft.pipeline import (
    make_trainer,
    materialize,
    model_reference,
    read_data,
    to_dataset,
    training_rows,
    training_tokenizer,
)
from quickft.recipe import load_recipe
from quickft.stack import require_runnable

BASELINE = "peft"
WATCHED_MODULES = ("unsloth", "unsloth_zoo", "peft", "trl", "transformers", "bitsandbytes", "torch")
CPU_NOTE = "On CPU the backends are expected to be about even: Unsloth's speedup comes from GPU kernels."
# Like for like: switches that make Unsloth's process run the same work as the baseline's. Unsloth's CPU mode swaps
# the loss for a chunked cross-entropy unless told not to (unsloth_zoo/cpu/ops.py).
LIKE_FOR_LIKE_ENV = {"UNSLOTH_CPU_CHUNKED_CE": "0"}


LIKE_FOR_LIKE = {
    "loss_type": "nll",
    "padding_free": False,
    "logging_nan_inf_filter": True,
    "torch_empty_cache_steps": None,
}
"""SFTConfig fields both rows of a like-for-like bench set explicitly, because the libraries' defaults differ on a
GPU: TRL 1.14 defaults to loss_type="chunked_nll" (the output head on trained tokens only), Unsloth's SFTConfig to
"nll" (its fused cross-entropy); Unsloth turns padding-free batching on by itself where it judges it safe, turns
transformers' NaN filter off (one fewer sync per step) and empties the CUDA cache every 250 steps. Unsloth's config
keeps a value given explicitly (its replacements fill defaults only; its padding-free choice is made only when the
field is unset). Each row's effective values are read back after training (effective_settings)."""


def like_for_like(method: str) -> dict:
    """LIKE_FOR_LIKE's fields for the method's config: loss_type and padding_free are SFT's (the other methods' loss
    types name other losses, which the recipe sets for both rows; quickft's DPO config sets padding_free=False)."""
    if method == "sft":
        return LIKE_FOR_LIKE
    return {k: LIKE_FOR_LIKE[k] for k in ("logging_nan_inf_filter", "torch_empty_cache_steps")}


def parse_variant(name: str) -> dict:
    """'peft+16bit+nogc' -> {"backend": "peft", "overrides": ["mode=lora", "gradient_checkpointing=false"]}."""
    backend, *switches = name.split("+")
    if backend not in ("unsloth", "peft"):
        raise UserError(f"--backends: unknown backend {backend!r} in {name!r}", hint="use unsloth or peft")
    table = {
        "4bit": "mode=qlora",
        "16bit": "mode=lora",
        "gc": "gradient_checkpointing=true",
        "nogc": "gradient_checkpointing=false",
    }
    unknown = [s for s in switches if s not in table]
    if unknown:
        raise UserError(
            f"--backends: unknown switch {'+'.join(unknown)!r} in {name!r}", hint=f"switches: {', '.join(table)}"
        )
    return {"name": name, "backend": backend, "overrides": [table[s] for s in switches]}


def isolating_variants(recipe) -> list[str]:
    """The PEFT baseline with and without 4-bit and with and without gradient checkpointing."""
    if recipe.mode == "full":
        return ["peft+gc" if not recipe.gradient_checkpointing else "peft+nogc"]
    return [
        "peft+16bit" if recipe.mode == "qlora" else "peft+4bit",
        "peft+nogc" if recipe.gradient_checkpointing else "peft+gc",
    ]


# ---------------------------------------------------------------------------------------------- the parent


def bench(
    recipe_path: str,
    overrides: list[str],
    *,
    variants: list[str],
    steps: int,
    warmup: int,
    repeat: int,
    isolate: bool = False,
    as_shipped: bool = False,
    output_dir: str | None = None,
    console: Console | None = None,
) -> dict:
    console = console or Console()
    recipe = load_recipe(recipe_path, overrides)  # validates before spawning anything
    if steps < 1 or warmup < 0 or repeat < 1:
        raise UserError("--steps and --repeat must be >= 1, --warmup >= 0")
    specs = [parse_variant(v) for v in variants]
    if isolate:
        specs += [parse_variant(v) for v in isolating_variants(recipe) if v not in variants]

    # a GPU this stack cannot run on stops here (exit 2), not in every worker after minutes of loading
    require_runnable(needs_4bit=recipe.mode == "qlora" or any("mode=qlora" in s["overrides"] for s in specs))
    replaced = replaced_settings(recipe, steps, warmup)
    if replaced:
        console.print(
            f"bench times {warmup} warm-up + {steps} steps per run, so it replaces the recipe's "
            + ", ".join(f"{k}={old} with {new}" for k, (old, new) in replaced.items())
            + " (--steps and --warmup set them)",
            highlight=False,
        )
    out_dir = rundir.pick_run_dir(f"bench-{recipe.name}", output_dir)
    rundir.create_run_dir(out_dir)
    rows = []
    for spec in specs:
        runs = []
        for r in range(repeat):
            label = f"{spec['name']}: run {r + 1}/{repeat} in a fresh process"
            runs.append(
                _spawn(
                    recipe_path,
                    overrides + spec["overrides"],
                    spec["backend"],
                    steps,
                    warmup,
                    as_shipped,
                    label=label,
                    console=console,
                )
            )
            if "error" in runs[-1]:
                break  # a variant that cannot run here will not run on a second try either
        rows.append(combine(spec, runs))
    result = {
        "recipe": str(recipe_path),
        "overrides": overrides,
        "steps": steps,
        "warmup": warmup,
        "repeat": repeat,
        "mode": "as shipped" if as_shipped else "like for like",
        "method": recipe.method,
        "tokens_counted": methods.tokens_counted(recipe.method),
        "replaced": replaced,
        "parent_pid": os.getpid(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": rows,
    }
    add_comparisons(result)
    rundir.write_json(out_dir / "bench.json", result)
    (out_dir / "bench.md").write_text(markdown(result), encoding="utf-8")
    result["output_dir"] = str(out_dir)
    return result


def replaced_settings(recipe, steps: int, warmup: int) -> dict[str, list]:
    """{setting: [the recipe's value, the one bench runs with]} for the settings a timed run overrides."""
    replaced = {}
    if recipe.max_steps and recipe.max_steps != warmup + steps:
        replaced["max_steps"] = [recipe.max_steps, warmup + steps]
    elif not recipe.max_steps:
        replaced["epochs"] = [recipe.epochs, f"max_steps={warmup + steps}"]
    if recipe.logging_steps != 1:
        replaced["logging_steps"] = [recipe.logging_steps, 1]
    if recipe.eval.every:
        replaced["eval.every"] = [recipe.eval.every, "off"]
    return replaced


def _spawn(
    recipe_path: str,
    overrides: list[str],
    backend: str,
    steps: int,
    warmup: int,
    as_shipped: bool,
    *,
    label: str,
    console: Console,
) -> dict:
    """Run one variant in a fresh worker process; while it works, show what it is doing (its progress file)."""
    with tempfile.TemporaryDirectory(prefix="quickft-bench-") as tmp:
        spec = {
            "recipe": str(Path(recipe_path).resolve()),
            "overrides": overrides,
            "backend": backend,
            "steps": steps,
            "warmup": warmup,
            "as_shipped": as_shipped,
            "run_dir": str(Path(tmp) / "run"),
            "progress": str(Path(tmp) / "progress"),
        }
        out = Path(tmp) / "result.json"
        env = dict(os.environ)
        if not as_shipped:
            env.update(LIKE_FOR_LIKE_ENV)
        code = "import sys; from quickft.bench import worker; worker(sys.argv[1], sys.argv[2])"
        log = Path(tmp) / "worker.log"
        started = time.perf_counter()
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(spec), str(out)], stdout=log_file, stderr=log_file, env=env
            )
            if console.is_terminal:
                with console.status(f"{label} ...") as status:
                    while proc.poll() is None:
                        time.sleep(0.25)
                        doing = _read(Path(spec["progress"])) or "starting"
                        status.update(f"{label}: {doing} ({time.perf_counter() - started:.0f} s)")
            else:
                console.print(f"{label} ...", highlight=False)
                proc.wait()
        console.print(f"{label}: done in {time.perf_counter() - started:.1f} s", highlight=False)
        if out.is_file():
            return json.loads(out.read_text())
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": f"the worker crashed: {tail[0]}", "pid": None}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _progress(spec: dict, text: str) -> None:
    """The worker's current phase or step, for the parent's status line (a file: the worker's output is a log)."""
    Path(spec["progress"]).write_text(text, encoding="utf-8")


def combine(spec: dict, runs: list[dict]) -> dict:
    """One table row from R repeats: medians over every measured step of every repeat."""
    row = {"variant": spec["name"], "backend": spec["backend"], "overrides": spec["overrides"]}
    if any("error" in r for r in runs):
        return row | {"error": next(r["error"] for r in runs if "error" in r), "pids": [r.get("pid") for r in runs]}
    steps = [t for r in runs for t in r["step_times_s"]]
    tokens = sum(t for r in runs for t in r["step_tokens"])
    samples = sum(s for r in runs for s in r["step_samples"])
    per_repeat = [sum(r["step_tokens"]) / sum(r["step_times_s"]) for r in runs]
    first = runs[0]
    return row | {
        "pids": [r["pid"] for r in runs],
        "imported": first["imported"],
        "reason": first["reason"],
        "device": first["device"],
        "precision": first["precision"],
        "load_in_4bit": first["load_in_4bit"],
        "gradient_checkpointing": first["gradient_checkpointing"],
        "settings": first["settings"],
        "step_time_mean_s": sum(steps) / len(steps),
        "step_time_median_s": statistics.median(steps),
        "step_time_min_s": min(steps),
        "step_time_max_s": max(steps),
        "measured_steps": len(steps),
        "measured_time_s": sum(steps),
        "tokens": tokens,
        "samples": samples,
        "tokens_per_s": tokens / sum(steps),
        "samples_per_s": samples / sum(steps),
        "repeat_tokens_per_s": per_repeat,
        "spread": (max(per_repeat) - min(per_repeat)) / (tokens / sum(steps)) if len(runs) > 1 else None,
        "load_time_s": statistics.median(r["load_time_s"] for r in runs),
        "memory": first["memory"],
        "peak_memory_mb": first["memory"].get("gpu_peak_allocated_mb", first["memory"].get("peak_rss_mb")),
        "mfu": first["mfu"],
        "losses": first["losses"],
    }


def add_comparisons(result: dict) -> None:
    """Speedup, memory saving and loss agreement of each row against the baseline row of this same bench."""
    rows = [r for r in result["rows"] if "error" not in r]
    base = next((r for r in rows if r["variant"] == BASELINE), rows[0] if rows else None)
    result["baseline"] = base["variant"] if base else None
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["memory_saving"] = 1 - r["peak_memory_mb"] / base["peak_memory_mb"]
        pairs = list(zip(r["losses"], base["losses"], strict=False))
        r["max_loss_diff"] = max(abs(a - b) for a, b in pairs) if pairs else None
        r["differs"] = {k: [base["settings"][k], v] for k, v in r["settings"].items() if v != base["settings"].get(k)}
    devices = {r["device"] for r in rows}
    result["note"] = CPU_NOTE if devices == {"cpu"} else None
    result["warnings"] = noise_warnings(rows, result["repeat"])


NOISY = 0.10
"""Repeats whose tokens/s differ by more than this share of their mean make a speedup of that size meaningless."""


def noise_warnings(rows: list[dict], repeat: int) -> list[str]:
    """What makes the ratios less certain than they look: one repeat, repeats that disagree, erratic steps."""
    warnings = []
    if repeat < 2:
        warnings.append("one repeat: no spread measured, so a speedup cannot be told from noise (--repeat 3)")
    for r in rows:
        if r["spread"] is not None and r["spread"] > NOISY:
            low, high = min(r["repeat_tokens_per_s"]), max(r["repeat_tokens_per_s"])
            warnings.append(
                f"{r['variant']}: its repeats ran at {low:,.0f}-{high:,.0f} tokens/s ({100 * r['spread']:.0f}% apart); "
                f"speedups within that are noise (another load on the machine?)"
            )
        if r["step_time_max_s"] > 3 * r["step_time_median_s"]:
            warnings.append(
                f"{r['variant']}: step times ranged {r['step_time_min_s'] * 1000:,.0f}-{r['step_time_max_s'] * 1000:,.0f}"
                f" ms (median {r['step_time_median_s'] * 1000:,.0f} ms): more warm-up, or a quieter machine"
            )
    return warnings


# ---------------------------------------------------------------------------------------------- the worker


def worker(spec_json: str, out_path: str) -> None:
    """Run one variant in this (fresh) process and write its measurements to out_path as JSON."""
    spec = json.loads(spec_json)
    started_pid = os.getpid()
    try:
        result = _measure(spec)
    except UserError as e:
        result = {"error": e.message}
    except Exception as e:  # a row that says why, never a crashed bench
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    result["pid"] = started_pid
    result["imported"] = [m for m in WATCHED_MODULES if m in sys.modules]
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


def _measure(spec: dict) -> dict:
    total_steps = spec["warmup"] + spec["steps"]
    _progress(spec, "reading the recipe and data")
    recipe = load_recipe(spec["recipe"], spec["overrides"] + [f"max_steps={total_steps}", "logging_steps=1"])
    recipe = dataclasses.replace(recipe, backend=spec["backend"])
    recipe, split = read_data(recipe)
    train_examples = split.train
    model_ref, local = model_reference(recipe)
    private_by_default(local)
    _progress(spec, "importing torch" + (" and Unsloth" if spec["backend"] == "unsloth" else ""))
    choice = choose_backend(recipe)  # imports unsloth first, and only, in an Unsloth worker
    if choice.backend != spec["backend"]:
        raise UserError(f"{spec['backend']} is not usable here: {choice.reason}")
    quiet_libraries()
    model_path = materialize(recipe, model_ref, train_examples, dtype=dense_dtype(recipe.mode, choice.precision))

    import torch

    cuda = choice.device == "cuda"
    _progress(spec, "loading the model")
    load_started = time.perf_counter()
    loaded = load(recipe, choice, model_path, local=local)
    if loaded.choice.backend != spec["backend"]:
        raise UserError(f"{spec['backend']} is not usable here: {loaded.choice.reason}")
    if cuda:
        torch.cuda.synchronize()
    load_time = time.perf_counter() - load_started
    _progress(spec, "tokenizing and building the trainer")
    training_tokenizer(loaded.tokenizer, recipe, train_examples)
    dataset = to_dataset(training_rows(recipe, train_examples, loaded.tokenizer).rows)
    counter = TokenCounter()
    trainer = make_trainer(
        recipe,
        choice,
        loaded.model,
        loaded.tokenizer,
        dataset,
        Path(spec["run_dir"]),
        counter=counter,
        settings=None if spec.get("as_shipped") else like_for_like(recipe.method),
    )
    if not spec.get("as_shipped"):
        # Unsloth rewrites the optimizer in SFTConfig as it is built (adamw_torch -> adamw_torch_fused on CPU); the
        # optimizer is only created in train(), so the recipe's choice still applies when set back here
        trainer.args.optim = recipe.optimizer

    from quickft.callbacks import StepTimer

    timer = StepTimer(
        counter, cuda, progress=lambda step: _progress(spec, f"step {step}/{total_steps} ({spec['warmup']} warm-up)")
    )
    timing = timer.timing
    trainer.add_callback(timer)
    metrics.reset_peak_memory(choice.device)
    trainer.train()
    w = spec["warmup"]  # warm-up steps (allocator, kernel autotuning, lazy init) are not timed
    tokens, times = timing["tokens"][w:], timing["times"][w:]
    flops = metrics.flops_figures(
        metrics.flop_counts(loaded.model),
        recipe.mode,
        trainer.passes(),
        tokens=counter.tokens,  # every step's (warm-up included): the sequences' mean length, GRPO's answers' share
        samples=counter.samples,
        generated=counter.generated,
        tokens_per_s=sum(tokens) / sum(times),
        gpu_name=choice.hardware.gpu_name,
        precision=choice.precision,
        processes=1,
        cuda=cuda,
    )
    settings = effective_settings(trainer, loaded.model) | {"tokens_per_step": sum(tokens) / len(tokens)}
    return {
        "settings": settings,
        "device": choice.device,
        "precision": choice.precision,
        "load_in_4bit": choice.load_in_4bit,
        "gradient_checkpointing": settings["gradient_checkpointing"],  # read from the model, not the recipe
        "reason": choice.reason,
        "load_time_s": load_time,
        "step_times_s": times,
        "step_tokens": tokens,
        "step_samples": timing["samples"][w:],
        "losses": timing["losses"][w:],
        "memory": metrics.memory(choice.device),
        "flops_per_token": flops["flops_per_token"],
        "mfu": flops["mfu"],
    }


def checkpointing_kind(model) -> str:
    """Which gradient checkpointing the layers run: transformers' (recompute on the GPU), Unsloth's ("unsloth":
    activations offloaded to the CPU, its choice from max_seq_length 512), or none; read from the modules' flags."""
    kinds = {m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")}
    kinds.discard(False)
    if not kinds:
        return "none"
    return ", ".join(
        sorted("recompute" if k is True else f"{k} (offloaded)" if k == "unsloth" else str(k) for k in kinds)
    )


def effective_settings(trainer, model) -> dict:
    """What this process really trained with, read from the live trainer and model after training (not from the
    recipe): libraries change settings behind it, and Unsloth patches TRL when imported."""
    args = trainer.args
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    options = getattr(optimizer, "defaults", {})
    kind = "fused" if options.get("fused") else "foreach" if options.get("foreach") else "torch's default"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    chunked = any(vars(m).get("_unsloth_cpu_chunked_ce") for m in (model, base))
    loss = getattr(base, "loss_function", None)
    facts = model_facts(model)
    return {
        "optimizer": f"{type(optimizer).__name__} ({kind})",
        "loss": "Unsloth's chunked cross-entropy" if chunked else getattr(loss, "__name__", type(loss).__name__),
        "padding_free": bool(getattr(args, "padding_free", False)),
        "packing": bool(getattr(args, "packing", False)),
        "gradient_checkpointing": facts["gradient_checkpointing"],
        "checkpointing_kind": checkpointing_kind(model),
        "loss_type": getattr(args, "loss_type", None),
        "nan_inf_filter": args.logging_nan_inf_filter,
        "empty_cache_steps": args.torch_empty_cache_steps,
        "full_16bit_eval": args.fp16_full_eval or args.bf16_full_eval,
        "embedding_device": str(model.get_input_embeddings().weight.device),
        "compute_dtype": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "weight_dtypes": ", ".join(facts["weight_dtypes"]),
        "linear4bit_layers": facts["linear4bit_layers"],
        "model": base.config._name_or_path,
    }


# ---------------------------------------------------------------------------------------------- output


MODE_NOTES = {
    "like for like": "like for like: both processes run the recipe's settings (Unsloth's rewrites undone where the "
    "libraries allow); any setting that still differs is listed next to the ratio. --as-shipped compares each "
    "backend with its own defaults instead.",
    "as shipped": "as shipped: each backend with the settings its library picks (Unsloth's optimizer, loss and "
    "checkpointing included); the ratio compares the two out-of-the-box experiences, not the same work.",
}


def _spread_text(row: dict) -> str:
    per = row["repeat_tokens_per_s"]
    return f" ({min(per):,.0f}-{max(per):,.0f})" if len(per) > 1 else ""


def differs_text(differs: dict) -> str:
    """'optimizer: AdamW (foreach) → AdamW (fused)' for each setting that differs from the baseline row."""
    return "; ".join(f"{k}: {base} → {mine}" for k, (base, mine) in differs.items())


def print_table(result: dict, console: Console) -> None:
    table = Table(
        title=f"quickft bench {result['recipe']} ({result['mode']}: {result['steps']} timed steps after "
        f"{result['warmup']} warm-up, x{result['repeat']})"
    )
    for col in (
        "variant",
        "step time (mean, min-max)",
        "tokens/s",
        "samples/s",
        "peak memory",
        "load",
        "speedup",
        "memory saving",
        "max loss diff",
        "MFU",
        "settings that differ from the baseline",
        "notes",
    ):
        table.add_column(col)
    for r in result["rows"]:
        if "error" in r:
            table.add_row(r["variant"], *["-"] * 10, f"[red]cannot run here:[/red] {r['error']}")
            continue
        mem_kind = "GPU max alloc" if "gpu_peak_allocated_mb" in r["memory"] else "peak RSS"
        table.add_row(
            r["variant"] + (" (baseline)" if r["variant"] == result["baseline"] else ""),
            f"{r['step_time_mean_s'] * 1000:.1f} ms ({r['step_time_min_s'] * 1000:.1f}-{r['step_time_max_s'] * 1000:.1f})",
            f"{r['tokens_per_s']:,.0f}" + _spread_text(r),
            f"{r['samples_per_s']:,.2f}",
            f"{r['peak_memory_mb']:,.0f} MB {mem_kind}",
            f"{r['load_time_s']:.1f} s",
            f"{r['speedup']:.2f}×",
            f"{100 * r['memory_saving']:+.0f}%",
            "-" if r["max_loss_diff"] is None else f"{r['max_loss_diff']:.4f}",
            "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
            differs_text(r["differs"]) or "none",
            f"{r['precision']}, {'4-bit' if r['load_in_4bit'] else '16/32-bit'}, "
            f"{'GC' if r['gradient_checkpointing'] else 'no GC'}; {r['reason']}",
        )
    console.print(table)
    ran = [r for r in result["rows"] if "error" not in r]
    if ran:
        settings = Table(title="effective settings, read from each process's trainer and model after training")
        settings.add_column("setting", style="bold")
        for r in ran:
            settings.add_column(r["variant"])
        for key in ran[0]["settings"]:
            values = [r["settings"].get(key) for r in ran]
            cells = [f"{v:,.1f}" if isinstance(v, float) else str(v) for v in values]
            differs = len({json.dumps(v) for v in values}) > 1
            settings.add_row(f"[yellow]{key}[/yellow]" if differs else key, *cells)
        console.print(settings)
    console.print(MODE_NOTES[result["mode"]], highlight=False)
    if result["note"]:
        console.print(result["note"], highlight=False)
    for warning in result["warnings"]:
        console.print(f"[yellow]noise:[/yellow] {warning}", highlight=False)
    console.print(f"method {result['method']}: tokens/s counts {result['tokens_counted']}", highlight=False)
    console.print(
        "tokens/s = every timed step's real tokens ÷ their total time, over all repeats (range: each repeat's own); "
        "step time is the mean of the same steps; speedup = tokens/s ÷ baseline tokens/s; memory saving = "
        "1 − peak ÷ baseline peak; max loss diff = largest |loss − baseline loss| over the timed steps (same data "
        "order and seed)",
        highlight=False,
    )


def markdown(result: dict) -> str:
    lines = [
        f"# quickft bench `{result['recipe']}`",
        "",
        f"{result['date']} · {result['mode']} · {result['steps']} timed steps after {result['warmup']} warm-up · "
        f"{result['repeat']} repeat(s) · baseline `{result['baseline']}`",
        "",
        "| variant | step time mean (ms) | tokens/s | samples/s | peak memory (MB) | load (s) | speedup | "
        "memory saving | max loss diff | MFU | settings that differ | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | - | - | - | - | - | - | - | - | - | - | cannot run here: {r['error']} |")
            continue
        loss_diff = "-" if r["max_loss_diff"] is None else f"{r['max_loss_diff']:.4f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['variant']} | {r['step_time_mean_s'] * 1000:.1f} | {r['tokens_per_s']:,.0f}{_spread_text(r)} | "
            f"{r['samples_per_s']:,.2f} | {r['peak_memory_mb']:,.0f} | {r['load_time_s']:.1f} | {r['speedup']:.2f}× | "
            f"{100 * r['memory_saving']:+.0f}% | {loss_diff} | {mfu} | {differs_text(r['differs']) or 'none'} | "
            f"{r['device']}, {r['precision']} |"
        )
    lines += [
        "",
        MODE_NOTES[result["mode"]],
        "",
        f"method {result['method']}: tokens/s counts {result['tokens_counted']}",
    ]
    if result["note"]:
        lines += ["", result["note"]]
    if result["warnings"]:
        lines += ["", *[f"- noise: {w}" for w in result["warnings"]]]
    if result["replaced"]:
        lines += ["", "replaced: " + ", ".join(f"{k}={old} → {new}" for k, (old, new) in result["replaced"].items())]
    return "\n".join(lines) + "\n"


def main(
    recipe_path,
    overrides,
    *,
    backends: str,
    steps: int,
    warmup: int,
    repeat: int,
    isolate: bool,
    as_json: bool,
    output_dir: str | None,
    as_shipped: bool = False,
) -> dict:
    console = Console() if Console().is_terminal else Console(width=200)
    progress = Console(stderr=True) if as_json else console  # --json keeps stdout to the JSON alone
    variants = [v.strip() for v in backends.split(",") if v.strip()]
    result = bench(
        recipe_path,
        overrides,
        variants=variants,
        steps=steps,
        warmup=warmup,
        repeat=repeat,
        isolate=isolate,
        as_shipped=as_shipped,
        output_dir=output_dir,
        console=progress,
    )
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result, console)
        console.print(f"written: {result['output_dir']}/bench.json, bench.md", highlight=False)
    return result
