"""quickft against a plain TRL script doing the same work: what does quickft's comfort cost?

    python benchmarks/vs_trl.py              # 5 alternating pairs (about 5 minutes on 2 CPU cores)
    python benchmarks/vs_trl.py --pairs 8

The work (issue #21): LoRA r=16 on q_proj/v_proj of a ~3.5M-parameter Llama built here, 600 Alpaca-style records,
micro-batch 8, max_seq_length 128, 60 steps, fp32, no gradient checkpointing, logging every 10 steps. The plain side
is PLAIN below: TRL's SFTTrainer on a Dataset holding exactly the token ids (and completion masks) quickft trains
on. Not prompt/completion text: TRL tokenizes prompt and completion together, so BPE merges across the boundary
(TRL warns "Mismatch between tokenized prompt and the start of tokenized prompt+completion") and its token stream is
shorter (9,966 tokens against quickft's 10,563 here, where quickft keeps the boundary): the steps would not do the
same work.

Each pair runs both sides in fresh processes, alternating which goes first. Before any timing counts, the two
trainers' effective arguments (read back from the training_args.bin each saved), their LoRA configs and the real
tokens each trained on are compared; the benchmark stops if they differ. Per step: the time from on_train_begin to
on_train_end (quickft's summary runtime_s; a callback in the plain script), over the same 60 steps. Whole process:
the wall time of each command, and quickft's again without the parts the plain script does not do (plots and
metrics.csv, test-case answers), which the summary times as after_phases.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS, BATCH, MAX_LEN, LR = 60, 8, 128, 2e-4

PLAIN = """
import json, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

model_dir, data, out, steps, batch, max_len, lr = sys.argv[1:8]
trl_defaults = sys.argv[8:] == ["trl-defaults"]  # leave bf16, gradient checkpointing and the optimizer to TRL
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
dataset = Dataset.from_list([json.loads(line) for line in open(data, encoding="utf-8")])
ours = {} if trl_defaults else {"bf16": False, "gradient_checkpointing": False, "optim": "adamw_torch"}
args = SFTConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch), max_length=int(max_len),
                 learning_rate=float(lr), logging_steps=10, **ours, warmup_steps=0.0, weight_decay=0.0,
                 completion_only_loss=True, save_strategy="no", report_to="none", use_cpu=True, seed=42, data_seed=42,
                 dataloader_num_workers=0, disable_tqdm=True)
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
clock = {}
class Clock(TrainerCallback):
    def on_train_begin(self, *a, **k): clock["begin"] = time.perf_counter()
    def on_train_end(self, *a, **k): clock["end"] = time.perf_counter()
trainer.add_callback(Clock())
trainer.train()
trainer.save_model(out)
tokens = sum(min(len(ids), int(max_len)) for ids in trainer.train_dataset["input_ids"])
json.dump({"runtime_s": clock["end"] - clock["begin"], "dataset_tokens": tokens}, open(out + "/plain.json", "w"))
"""

RECIPE = """
from quickft import Data, LoRA, Recipe
recipe = Recipe(
    name="vs_trl", model={model!r}, data=Data(path={data!r}, holdout=0),
    mode="lora", lora=LoRA(r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "v_proj"]),
    max_seq_length={max_len}, micro_batch_size={batch}, learning_rate={lr}, max_steps={steps}, logging_steps=10,
    precision="fp32", gradient_checkpointing=False, optimizer="adamw_torch", seed=42, backend="peft",
)
"""

# the trainer arguments that decide the work and its speed, compared between the two sides
COMPARED = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "bf16",
    "fp16",
    "gradient_checkpointing",
    "max_length",
    "packing",
    "padding_free",
    "completion_only_loss",
    "seed",
    "logging_steps",
    "dataloader_num_workers",
)


def alpaca_records(n: int = 600, seed: int = 0) -> list[dict]:
    """Alpaca-shaped records (instruction, input, output) of varied lengths, in Spanish and English."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        if i % 3 == 0:
            records.append(
                {
                    "instruction": "Suma los dos números y explica el resultado.",
                    "input": f"{a} y {b}",
                    "output": f"La suma de {a} y {b} es {a + b}. "
                    + "Primero sumamos las unidades. " * rng.randint(0, 4),
                }
            )
        elif i % 3 == 1:
            records.append(
                {
                    "instruction": f"What is {a} times {b}?",
                    "input": "",
                    "output": f"{a} times {b} is {a * b}." + " We multiply digit by digit." * rng.randint(0, 5),
                }
            )
        else:
            words = " ".join(
                rng.choice(["gato", "perro", "casa", "libro", "sol", "mar"]) for _ in range(rng.randint(3, 12))
            )
            records.append({"instruction": "Cuenta las palabras.", "input": words, "output": str(len(words.split()))})
    return records


def prepare(work: Path) -> dict:
    """The model, the Alpaca file quickft reads, and the same examples tokenized as quickft trains on them."""
    from transformers import AutoTokenizer

    from quickft.data import read_examples
    from quickft.data.encode import prepare as encode_rows
    from quickft.data.encode import training_text
    from quickft.models.scratch import build_scratch
    from quickft.recipe import Data, Scratch, load_recipe

    data = work / "alpaca.json"
    data.write_text(json.dumps(alpaca_records(), ensure_ascii=False), encoding="utf-8")
    spec = Data(path=str(data), format="alpaca")
    examples = read_examples(data, spec)
    os.environ.setdefault("QUICKFT_CACHE", str(work / "cache"))
    model = build_scratch(
        Scratch(
            hidden_size=256,
            num_layers=4,
            num_heads=4,
            intermediate_size=688,
            vocab_size=1000,
            max_position_embeddings=256,
        ),
        [training_text(ex, spec) for ex in examples],
    )
    recipe = work / "vs_trl_recipe.py"
    recipe.write_text(
        RECIPE.format(model=str(model), data=str(data), max_len=MAX_LEN, batch=BATCH, lr=LR, steps=STEPS),
        encoding="utf-8",
    )
    from quickft.pipeline import read_data

    loaded, split = read_data(load_recipe(recipe))  # quickft's own reading: duplicates dropped, nothing held out
    rows = encode_rows(split.train, AutoTokenizer.from_pretrained(model), loaded).rows
    plain_data = work / "tokenized.jsonl"
    plain_data.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    script = work / "plain_trl.py"
    script.write_text(PLAIN, encoding="utf-8")
    return {"model": model, "recipe": recipe, "script": script, "plain_data": plain_data}


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def run_quickft(setup: dict, out: Path) -> dict:
    wall = timed([sys.executable, "-m", "quickft", "run", str(setup["recipe"]), "--output-dir", str(out), "--quiet"])
    summary = json.loads((out / "summary.json").read_text())
    # what the plain script does not do: plots and metrics.csv, answering the test cases (it saves the model too, so
    # quickft's "saving the model" stays in)
    extra = sum(s for name, s in summary["train"]["after_phases"].items() if not name.startswith("saving"))
    return {
        "wall_s": wall,
        "runtime_s": summary["train"]["runtime_s"],
        "extra_s": extra,
        "tokens": summary["data"]["tokens"],
        "summary": summary,
    }


def run_plain(setup: dict, out: Path, *, steps: int = STEPS, trl_defaults: bool = False) -> dict:
    out.mkdir(parents=True)
    cmd = [
        sys.executable,
        str(setup["script"]),
        str(setup["model"]),
        str(setup["plain_data"]),
        str(out),
        str(steps),
        str(BATCH),
        str(MAX_LEN),
        str(LR),
    ] + (["trl-defaults"] if trl_defaults else [])
    wall = timed(cmd)
    plain = json.loads((out / "plain.json").read_text())
    return {"wall_s": wall, "runtime_s": plain["runtime_s"], "tokens": plain["dataset_tokens"]}


def same_work(q_dir: Path, p_dir: Path, q: dict, p: dict) -> list[str]:
    """What differs between the two trainers' effective arguments, LoRA configs and trained tokens (empty: none)."""
    import torch

    qa, pa = (torch.load(d / "training_args.bin", weights_only=False) for d in (q_dir, p_dir))
    problems = [
        f"{k}: quickft {getattr(qa, k)!r} vs TRL {getattr(pa, k)!r}"
        for k in COMPARED
        if getattr(qa, k) != getattr(pa, k)
    ]
    qa_lora, pa_lora = (json.loads((d / "adapter_config.json").read_text()) for d in (q_dir, p_dir))
    for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias"):
        a, b = qa_lora.get(k), pa_lora.get(k)
        if (sorted(a) if isinstance(a, list) else a) != (sorted(b) if isinstance(b, list) else b):
            problems.append(f"lora {k}: quickft {a!r} vs TRL {b!r}")
    if q["tokens"] != p["tokens"]:
        problems.append(f"tokens in the training set: quickft {q['tokens']} vs TRL {p['tokens']}")
    return problems


def help_seconds(n: int = 5) -> list[float]:
    """Wall time of `quickft --help` (the installed command), n times."""
    command = Path(sys.executable).parent / "quickft"
    return [timed([str(command), "--help"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--trl-defaults-steps",
        type=int,
        default=10,
        help="also time the plain script with TRL's own defaults (bf16, "
        "gradient checkpointing, fused AdamW) for this many steps; 0 skips it",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quickft-vs-trl-") as tmp:
        work = Path(tmp)
        setup = prepare(work)
        pairs = []
        for i in range(args.pairs):
            order = ("quickft", "plain") if i % 2 == 0 else ("plain", "quickft")
            results = {}
            for side in order:
                out = work / f"{side}-{i}"
                results[side] = run_quickft(setup, out) if side == "quickft" else run_plain(setup, out)
            q, p = results["quickft"], results["plain"]
            if i == 0:
                problems = same_work(work / "quickft-0", work / "plain-0", q, p)
                if problems:
                    raise SystemExit("not the same work:\n  " + "\n  ".join(problems))
                print(f"same work checked: {len(COMPARED)} trainer arguments, the LoRA config, {q['tokens']:,} tokens")
            pair = {
                "first": order[0],
                "step_ratio": q["runtime_s"] / p["runtime_s"],
                "process_ratio": q["wall_s"] / p["wall_s"],
                "process_ratio_without_extras": (q["wall_s"] - q["extra_s"]) / p["wall_s"],
                "quickft": {k: v for k, v in q.items() if k != "summary"},
                "plain": p,
            }
            pairs.append(pair)
            print(
                f"pair {i + 1} ({order[0]} first): training {q['runtime_s']:.2f} s vs {p['runtime_s']:.2f} s "
                f"({pair['step_ratio']:.3f}); process {q['wall_s']:.1f} s vs {p['wall_s']:.1f} s "
                f"({pair['process_ratio']:.3f}; {pair['process_ratio_without_extras']:.3f} without plots "
                f"and answers, {q['extra_s']:.1f} s)",
                flush=True,
            )
        report(pairs)
        if args.trl_defaults_steps:
            steps = args.trl_defaults_steps
            plain = run_plain(setup, work / "trl-defaults", steps=steps, trl_defaults=True)
            ours = statistics.median(p["quickft"]["runtime_s"] for p in pairs) / STEPS
            print(
                f"  plain TRL with its own defaults (bf16=True, gradient_checkpointing=True, adamw_torch_fused), "
                f"{steps} steps: {plain['runtime_s'] / steps:.3f} s/step, against quickft's {ours:.3f} s/step "
                f"({plain['runtime_s'] / steps / ours:.0f}× slower)"
            )
        helps = help_seconds()
        print(
            f"  quickft --help: median {statistics.median(helps):.2f} s of {len(helps)} ({min(helps):.2f}-{max(helps):.2f})"
        )


def report(pairs: list[dict]) -> None:
    print()
    print(f"quickft / plain TRL over {len(pairs)} alternating pairs (median, min-max):")
    for key, label in (
        ("step_ratio", "training (on_train_begin to on_train_end, 60 steps)"),
        ("process_ratio", "whole process"),
        ("process_ratio_without_extras", "whole process without plots, metrics.csv and test-case answers"),
    ):
        values = [p[key] for p in pairs]
        print(f"  {label}: {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
    q = pairs[0]["quickft"]
    print(
        f"  one quickft run: {q['wall_s']:.1f} s in all, {q['runtime_s']:.1f} s training, {q['extra_s']:.1f} s plots "
        "and answers"
    )


if __name__ == "__main__":
    main()
