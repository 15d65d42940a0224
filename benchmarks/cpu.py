"""LoRA SFT of SmolLM2-135M-Instruct on a CPU: quickft against a plain TRL script, with TRL's defaults and in fp32
without gradient checkpointing, and against Unsloth's CPU mode; each side in a process of its own, in alternating
rounds. Prints a markdown table (docs/benchmarks.md keeps the results).

    python benchmarks/cpu.py                     # 2 rounds of the 4 sides, 8 steps each (about 10 minutes quiet)
    python benchmarks/cpu.py --rounds 3 --steps 12 --sides quickft,trl-defaults
    python benchmarks/cpu.py --sharing           # the demo alone and beside a busy process, OpenMP spinning or not

The work (issue 38): LoRA r=16, alpha 32, no dropout, on every linear layer; the tutor data (data/tutor_matematicas.txt,
loss on the answers), packed into sequences of up to 256 tokens (about three examples each), 4 sequences a step, lr
2e-4 (linear decay), seed 42. The plain sides train on exactly the token ids quickft trains on (quickft's tokenized
rows, packed by TRL the same way), from the same de-quantized copy of the GGUF (float32); each keeps its own defaults
for everything that does not change the work: precision, gradient checkpointing, optimizer.

  quickft        `quickft run` as a user runs it: precision=auto (on a CPU with bf16 instructions, its probe picks)
  trl-defaults   a plain TRL SFTTrainer script with TRL's defaults (bf16 autocast and gradient checkpointing on)
  trl-fp32       the same script with bf16=False, gradient_checkpointing=False
  unsloth        Unsloth's CPU mode (unsloth 2026.10.9+): FastLanguageModel and its get_peft_model, TRL's defaults

Per side: tokens/s and s/step over the steps after the first (a warm-up: lazy initialization, oneDNN's kernels), read
from quickft's metrics.jsonl or, in the plain scripts, from a callback's clock around each step and the tokens each
training_step received; the process's peak resident memory (wait4's ru_maxrss); the final step's loss; the whole
process's wall time (imports, loading, quickft's precision probe). Each side's tokens per step are checked equal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDES = ("quickft", "trl-defaults", "trl-fp32", "unsloth")
SEQ, BATCH, LR = 256, 4, 2e-4
DATA = ROOT / "data" / "tutor_matematicas.txt"
PROMPT = "Pregunta: {prompt}\nRespuesta: "
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # "all-linear" on Llama

RECIPE = """
from quickft import Data, LoRA, Recipe
recipe = Recipe(
    name="cpu_bench", model={model!r},
    data=Data(path={data!r}, prompt_template={prompt!r}, batching="packed", holdout=0),
    mode="lora", lora=LoRA(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
    max_seq_length={seq}, micro_batch_size={batch}, learning_rate={lr}, max_steps={steps}, logging_steps=1, seed=42,
    backend="peft",
)
"""

PLAIN = """
import json, os, sys, time
kind, model_dir, data, out, steps, batch, seq, lr = sys.argv[1:9]
if kind == "unsloth":
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from unsloth import FastLanguageModel  # first: it patches transformers, trl and peft
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
peft_config = None
if kind == "unsloth":
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=model_dir, max_seq_length=int(seq),
                                                         load_in_4bit=False, local_files_only=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                                             random_state=42)
else:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
ours = {"bf16": False, "gradient_checkpointing": False} if kind == "trl-fp32" else {}
args = SFTConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch), max_length=int(seq),
                 learning_rate=float(lr), packing=True, completion_only_loss=True, logging_steps=1,
                 save_strategy="no", report_to="none",
                 use_cpu=True, seed=42, data_seed=42, dataloader_num_workers=0, disable_tqdm=True, **ours)
dataset = Dataset.from_list([json.loads(line) for line in open(data, encoding="utf-8")])
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
tokens, times = [], []
step = trainer.training_step
def counting_step(model, inputs, *a, **k):  # the tokens each step trains on (no padding: packed, padding-free)
    tokens.append(int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel())
    return step(model, inputs, *a, **k)
trainer.training_step = counting_step
class Clock(TrainerCallback):
    def on_step_begin(self, *a, **k): self.began = time.perf_counter()
    def on_step_end(self, *a, **k): times.append(time.perf_counter() - self.began)
trainer.add_callback(Clock())
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
checkpointing = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
weights = sorted({str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters()})
json.dump({"step_s": times, "step_tokens": tokens, "losses": losses, "bf16": trainer.args.bf16,
           "gradient_checkpointing": checkpointing or trainer.args.gradient_checkpointing, "weights": weights,
           "optim": str(trainer.args.optim.value), "packing": trainer.args.packing},
          open(os.path.join(out, "plain.json"), "w"))
"""


def prepare(work: Path, steps: int) -> dict:
    """The de-quantized SmolLM2 folder, quickft's recipe for it, and the token ids quickft trains on."""
    from transformers import AutoTokenizer

    from quickft.data.encode import prepare as encode_rows
    from quickft.models import dense_checkpoint, locate, packaged_gguf
    from quickft.pipeline import read_data, training_tokenizer
    from quickft.recipe import load_recipe

    gguf = packaged_gguf()
    dense = str(dense_checkpoint(locate(gguf)[0], "float32").path)
    recipe = work / "cpu_bench.py"
    text = RECIPE.format(model=gguf, data=str(DATA), prompt=PROMPT, seq=SEQ, batch=BATCH, lr=LR, steps=steps)
    recipe.write_text(text, encoding="utf-8")
    loaded = load_recipe(recipe)
    loaded, split = read_data(loaded)
    examples = split.train
    tokenizer = AutoTokenizer.from_pretrained(dense)
    training_tokenizer(tokenizer, loaded, examples)
    rows = encode_rows(examples, tokenizer, loaded).rows
    data = work / "tokenized.jsonl"
    data.write_text("\n".join(json.dumps({k: r[k] for k in ("input_ids", "completion_mask")}) for r in rows))
    script = work / "plain.py"
    script.write_text(PLAIN, encoding="utf-8")
    return {"dense": dense, "recipe": recipe, "data": data, "script": script, "steps": steps}


def run_process(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak resident memory in MB) of a command run to its end; stops the benchmark if it fails."""
    began = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd[:5])} failed:\n{log.read().decode(errors='replace')[-4000:]}")
    return time.perf_counter() - began, usage.ru_maxrss / 1024


def run_side(side: str, setup: dict, out: Path) -> dict:
    if side == "quickft":
        wall, rss = run_process([sys.executable, "-m", "quickft", "run", str(setup["recipe"]), "--output-dir",
                                 str(out), "--quiet"])  # fmt: skip
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        backend = json.loads((out / "backend.json").read_text())
        tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}, *rows], rows, strict=False)]
        probe = (backend.get("cpu") or {}).get("probe")
        settings = f"{backend['precision']}" + (
            f" (probe {probe['bf16_s']:.2f} s bf16 vs {probe['fp32_s']:.2f} s fp32)" if probe else ""
        )
        facts = backend["model"]
        result = {
            "step_s": [r["step_time_s"] for r in rows],
            "step_tokens": tokens,
            "losses": [r["loss"] for r in rows],
            "settings": settings + f", checkpointing {'on' if facts['gradient_checkpointing'] else 'off'}",
        }
    else:
        out.mkdir(parents=True)
        args = [setup["dense"], str(setup["data"]), str(out), str(setup["steps"]), str(BATCH), str(SEQ), str(LR)]
        wall, rss = run_process([sys.executable, str(setup["script"]), side, *args])
        plain = json.loads((out / "plain.json").read_text())
        result = {k: plain[k] for k in ("step_s", "step_tokens", "losses")}
        result["settings"] = (
            f"{'bf16' if plain['bf16'] else 'fp32'} (weights {'/'.join(plain['weights'])}), checkpointing "
            f"{'on' if plain['gradient_checkpointing'] else 'off'}, {plain['optim']}"
            + ("" if plain["packing"] else ", packing off")
        )
    timed, tokens = result["step_s"][1:], result["step_tokens"][1:]  # the first step is a warm-up
    return result | {
        "wall_s": wall,
        "peak_rss_mb": rss,
        "s_per_step": sum(timed) / len(timed),
        "tokens_per_s": sum(tokens) / sum(timed),
        "tokens_per_step": sum(tokens) / len(tokens),
        "final_loss": result["losses"][-1],
    }


def machine() -> str:
    import torch

    from quickft.cpu import read_cpu

    cpu = read_cpu()
    return (
        f"{cpu.name}, {cpu.physical_cores} physical cores ({cpu.usable_cores} usable), {', '.join(cpu.features)}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; Python {platform.python_version()}; "
        f"{datetime.date.today().isoformat()}"
    )


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: each side's median over the rounds (with the range), and its ratio to the others."""
    med = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
           for side, runs in results.items()}  # fmt: skip
    lines = [
        "| side | settings it ran | tokens/s | s/step | tokens/step | peak RSS (MB) | final loss | process (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for side, runs in results.items():
        rates = [r["tokens_per_s"] for r in runs]
        lines.append(
            f"| {side} | {runs[0]['settings']} | {med[side]['tokens_per_s']:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {med[side]['s_per_step']:.2f} | {med[side]['tokens_per_step']:,.0f} | {med[side]['peak_rss_mb']:,.0f} "
            f"| {med[side]['final_loss']:.4f} "
            f"| {med[side]['wall_s']:.0f} |"
        )
    if "quickft" in med:
        ratios = [f"{side} {med['quickft']['tokens_per_s'] / m['tokens_per_s']:.2f}x" for side, m in med.items()
                  if side != "quickft"]  # fmt: skip
        lines.append("")
        lines.append(f"quickft's tokens/s over each side's: {', '.join(ratios)}")
    return "\n".join(lines)


def benchmark(args) -> None:
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise SystemExit(f"unknown side(s) {sorted(unknown)}: choose from {', '.join(SIDES)}")
    print(f"machine: {machine()}; load average at start {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="quickft-cpu-bench-") as tmp:
        work = Path(tmp)
        setup = prepare(work, args.steps)
        results: dict[str, list[dict]] = {side: [] for side in sides}
        for i in range(args.rounds):
            order = sides if i % 2 == 0 else sides[::-1]
            for side in order:
                r = run_side(side, setup, work / f"{side}-{i}")
                results[side].append(r)
                print(
                    f"round {i + 1} {side}: {r['tokens_per_s']:.0f} tokens/s, {r['s_per_step']:.2f} s/step, "
                    f"{r['tokens_per_step']:.0f} tokens/step, peak RSS {r['peak_rss_mb']:,.0f} MB, final loss "
                    f"{r['final_loss']:.4f}, {r['wall_s']:.0f} s in all; load {load()}",
                    flush=True,
                )
        per_step = {side: round(runs[0]["tokens_per_step"]) for side, runs in results.items()}
        if len(set(per_step.values())) > 1:
            print(f"WARNING: the sides trained different tokens per step: {per_step}")
        print(f"\nload average at the end {load()}\n")
        print(table(results))
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


SHARING_STEPS = 150


def sharing(args) -> None:
    """`quickft run recipes/tiny_math.py max_steps=150`, time in training steps: alone and beside one busy Python
    loop, with OpenMP's threads spinning as libgomp's default has them (OMP_WAIT_POLICY=ACTIVE with
    GOMP_SPINCOUNT=300000: its default spin, then sleep) and waiting passively (quickft's default)."""
    print(f"machine: {machine()}; load average at start {load()}", flush=True)
    spin = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="quickft-sharing-") as tmp:
        for i in range(args.rounds):
            for policy, env in (("libgomp default (spin)", spin), ("passive (quickft)", passive)):
                for company in ("alone", "beside one busy process"):
                    out = Path(tmp) / f"{i}-{len(times)}-{policy[:4]}-{company[:5]}"
                    busy = None
                    if company != "alone":
                        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    try:
                        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
                        run_process([sys.executable, "-m", "quickft", "run", "recipes/tiny_math.py",
                                     f"max_steps={SHARING_STEPS}", "--quiet", "--output-dir", str(out)],
                                    env=full_env | env)  # fmt: skip
                    finally:
                        if busy:
                            busy.kill()
                            busy.wait()
                    seconds = json.loads((out / "summary.json").read_text())["train"]["steps_time_s"]
                    times.setdefault((policy, company), []).append(seconds)
                    print(f"round {i + 1}, {policy}, {company}: {seconds:.1f} s in steps; load {load()}", flush=True)
    print("\n| OpenMP waiting | alone (s) | beside one busy process (s) | slower |\n| --- | ---: | ---: | ---: |")
    for policy in ("libgomp default (spin)", "passive (quickft)"):
        alone = statistics.median(times[(policy, "alone")])
        shared = statistics.median(times[(policy, "beside one busy process")])
        print(f"| {policy} | {alone:.1f} | {shared:.1f} | {shared / alone:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)}")
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures here")
    parser.add_argument("--sharing", action="store_true", help="the sharing measurement instead (tiny_math demo)")
    args = parser.parse_args()
    sharing(args) if args.sharing else benchmark(args)


if __name__ == "__main__":
    main()
