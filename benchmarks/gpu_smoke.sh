#!/usr/bin/env bash
# The first GPU run's checks, in one script for a lent GPU (about 8 minutes on an H100; written before any GPU was
# available to this project, so it has not been run yet: see docs/benchmarks.md). One line per check on stdout:
#   PASS|FAIL <check>: <what was measured>
# Needs: a CUDA machine, this repository installed (make install), no hub. Usage: bash benchmarks/gpu_smoke.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/quickft-gpu-smoke}
rm -rf "$OUT" && mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
Q="$PY -m quickft"
export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
say() { echo "$1 $2: $3"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/card: /'
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
[ -d benchmarks/models/tinyllama ] || $PY benchmarks/build_model.py tinyllama >/dev/null
[ -d benchmarks/models/phi-2 ] || $PY benchmarks/build_model.py phi-2 >/dev/null
COMMON=(model=./benchmarks/models/tinyllama max_steps=12 logging_steps=1 max_new_tokens=8)

# 2: a 16-bit LoRA run on the PEFT path, then chat: both on the GPU
$Q run benchmarks/lora_math.py "${COMMON[@]}" backend=peft --output-dir "$OUT/lora" --quiet >"$OUT/lora.log" 2>&1
device=$($PY - "$OUT/lora" <<'EOF'
import sys
from quickft.chat import load_session
s = load_session(sys.argv[1], backend="peft")
print(next(s.model.parameters()).device)
EOF
)
[[ "$device" == cuda* ]] && r=PASS || r=FAIL
say $r "lora-then-chat-on-gpu" "chat's model on $device"

# 4: Unsloth with in-training test cases: checkpointing still on after the first evaluation, and the peaks
$Q run benchmarks/lora_math.py "${COMMON[@]}" backend=unsloth gradient_checkpointing=true eval.every=4 \
    --output-dir "$OUT/unsloth" --quiet >"$OUT/unsloth.log" 2>&1
$PY - "$OUT/unsloth" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
peak = lambda r: r.get("gpu_peak_reserved_mb")
before = [peak(r) for r in rows if r["step"] <= 4]
after = [peak(r) for r in rows if r["step"] > 4]
gc = json.loads((run / "backend.json").read_text())["model"]["gradient_checkpointing"]
ok = gc and before and after and max(after) <= 1.10 * max(before)
print(f"{'PASS' if ok else 'FAIL'} unsloth-checkpointing-after-eval: checkpointing {gc}, peak reserved "
      f"{max(before):,.0f} MB before the first evaluation, {max(after):,.0f} MB after")
EOF

# 6: the run's tokens/s (steps synced at their end) against bench's synced tokens/s on the same recipe
$Q bench benchmarks/lora_math.py "${COMMON[@]}" --backends unsloth --steps 12 --warmup 2 --json \
    >"$OUT/bench.json" 2>"$OUT/bench.log"
$PY - "$OUT/unsloth" "$OUT/bench.json" <<'EOF'
import json, sys
run = json.loads(open(f"{sys.argv[1]}/summary.json").read())["train"]["tokens_per_s"]
rows = json.load(open(sys.argv[2]))["rows"]
bench = next(r["tokens_per_s"] for r in rows if r["backend"].startswith("unsloth"))
ok = 0.85 <= run / bench <= 1.15
print(f"{'PASS' if ok else 'FAIL'} run-vs-bench-tokens-per-s: run {run:,.0f}, bench {bench:,.0f} ({run / bench:.2f}x)")
EOF

# 3: Phi-2's architecture in QLoRA on an emulated GTX 1050 Ti (4 GiB, compute capability 6.1: PEFT, fp16), then
# export: the 5.6 GB merge cannot be loaded back on the emulated card, so the check goes to the CPU and the merged
# files stay
export QUICKFT_GPU_MEMORY_GB=4 QUICKFT_GPU_CAPABILITY=6.1
$Q run recipes/phi2_math.py model=./benchmarks/models/phi-2 max_steps=2 precision=fp16 max_new_tokens=4 \
    data.holdout=2 --output-dir "$OUT/phi2" --quiet >"$OUT/phi2.log" 2>&1
$Q export "$OUT/phi2" --to merged --out "$OUT/phi2-merged" --json >"$OUT/export.json" 2>"$OUT/export.log"
code=$?
unset QUICKFT_GPU_MEMORY_GB QUICKFT_GPU_CAPABILITY
$PY - "$OUT/export.json" "$code" <<'EOF'
import json, sys
try:
    record = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"FAIL phi2-export-at-4gib: exit {sys.argv[2]}, no export.json ({e})")
    raise SystemExit
where = record["check"].get("loaded_back_on", "the GPU")
ok = sys.argv[2] == "0" and record["check"].get("ok", False)
print(f"{'PASS' if ok else 'FAIL'} phi2-export-at-4gib: exit {sys.argv[2]}, loaded back on {where}")
EOF
