"""How much memory `quickft export --to merged` really takes, against the one-copy-plus-a-layer it promises.

    python benchmarks/export_memory.py                # TinyLlama-1.1B's architecture, random bf16 weights (2.2 GB)
    python benchmarks/export_memory.py --model llama-14m

1. builds the model with benchmarks/build_model.py (once), 2. trains a 2-step LoRA on it with `quickft run`,
3. runs `quickft export RUN --no-check` in a fresh process and reads its peak RSS from the kernel (wait4's
ru_maxrss), next to the peak RSS of a process that only imports what export imports. Prints one table; the figures
in docs/export.md come from it.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKFT = [sys.executable, "-m", "quickft"]


def peak_rss_mb(command: list[str], env: dict) -> float:
    """Peak resident memory of a command's process, in MB, as the kernel counted it."""
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return usage.ru_maxrss / 1024  # KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tinyllama")
    args = parser.parse_args()
    model = ROOT / "benchmarks" / "models" / args.model
    if not (model / "config.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks/build_model.py"), args.model], check=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "QUICKFT_CACHE": tempfile.mkdtemp()}
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks" / "models") as tmp:
        recipe = Path(tmp) / "lora.py"
        recipe.write_text(
            textwrap.dedent(
                f"""
                from quickft import Data, LoRA, Recipe
                recipe = Recipe(
                    model={str(model)!r},
                    data=Data(path={str(ROOT / "data/tutor_matematicas.txt")!r}, holdout=0),
                    mode="lora", lora=LoRA(r=8, target_modules="all-linear"),
                    max_seq_length=32, micro_batch_size=1, max_steps=2, logging_steps=1, backend="peft",
                )
                """
            )
        )
        run = Path(tmp) / "run"
        subprocess.run([*QUICKFT, "run", str(recipe), "--output-dir", str(run), "--quiet"], check=True, env=env)
        imports = "import torch, transformers, peft, safetensors; import quickft.export, quickft.backends"
        baseline = peak_rss_mb([sys.executable, "-c", imports], env)
        peak = peak_rss_mb([*QUICKFT, "export", str(run), "--no-check", "--out", str(Path(tmp) / "merged")], env)
        record = json.loads((Path(tmp) / "merged" / "export.json").read_text())
        model_mb = record["merged"]["bytes"] / 2**20
        shards = sorted(p.stat().st_size for p in (Path(tmp) / "merged").glob("*.safetensors"))
    layer_mb = shards[-1] / 2**20
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.model}: {record['weights']:,} weights")
    print("| merged model | largest shard | peak RSS of export | imports alone | export minus imports | × model |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {model_mb:,.0f} MB ({record['dtype']}) | {layer_mb:,.0f} MB | {peak:,.0f} MB | {baseline:,.0f} MB | "
        f"{peak - baseline:,.0f} MB | {(peak - baseline) / model_mb:.2f} |"
    )


if __name__ == "__main__":
    main()
