"""Both backends train the tiny model for real on CPU, offline; both adapters load with plain PEFT."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from quickft.cli import main
from tests.conftest import ROOT

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
    monkeypatch.setattr("quickft.train.unsloth_status", hardware.unsloth_status)
    code = main(["run", str(lora_recipe), "--backend", "unsloth", "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "Unsloth cannot run here: no GPU found" in err and "Traceback" not in err


@pytest.mark.parametrize("as_json", [True, False])
def test_doctor_names_the_backend_it_would_pick(as_json):
    args = [sys.executable, "-m", "quickft", "doctor"] + (["--json"] if as_json else [])
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    if as_json:
        info = json.loads(result.stdout)
        assert info["verdict"]["backend"] == "peft" and "no GPU found" in info["verdict"]["why"]
        assert info["efficient fine-tuning"]["4-bit here"] == "works"
        assert info["efficient fine-tuning"]["unsloth imports"] == "yes"
        assert info["numeric core"]["torch"] == torch.__version__
    else:
        assert "auto picks: peft in fp32" in result.stdout and "numeric core" in result.stdout
