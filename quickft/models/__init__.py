"""Where a base model comes from: a hub id, a local directory, a GGUF file, a model Ollama has pulled, or a new one
with random weights (Scratch). Each is checked before anything heavy loads; a GGUF is de-quantized once into a cached
Hugging Face directory (gguf.py), an Ollama name is found through Ollama's own files (ollama.py), a Scratch model is
built once and cached (scratch.py).

Nothing here imports torch or transformers at module level (`quickft --help` stays fast).
"""

from __future__ import annotations

import json
from pathlib import Path

from quickft.errors import UserError
from quickft.models.gguf import (
    GGUF,
    Dense,
    content_hash,
    dense_checkpoint,
    dense_dtype,
    entry_ok,
    gguf_record,
    has_gguf_magic,
    is_cached,
    packaged_gguf,
    read_gguf,
)
from quickft.models.ollama import OLLAMA_PREFIX, ollama_gguf, ollama_models_dir, parse_ollama_name

__all__ = [
    "GGUF",
    "Dense",
    "check_hub_model",
    "check_model_dir",
    "content_hash",
    "dense_checkpoint",
    "dense_dtype",
    "gguf_record",
    "is_cached",
    "locate",
    "model_max_length",
    "ollama_gguf",
    "ollama_models_dir",
    "packaged_gguf",
    "parse_ollama_name",
    "read_gguf",
    "run_base_model",
]


def locate(model: str) -> tuple[str | GGUF, bool]:
    """(local directory, hub id, or GGUF; is it local). Checks what can be checked without loading anything: a path
    that looks local must exist; a GGUF must be whole and of a kind transformers de-quantizes."""
    if model.startswith(OLLAMA_PREFIX):
        return ollama_gguf(model), True
    candidate = Path(model).expanduser()
    if candidate.is_file():
        if candidate.suffix.lower() != ".gguf" and not has_gguf_magic(candidate):
            raise UserError(
                f"model {model!r} is a file, not a model directory or a GGUF",
                hint="point `model` at a model directory (save_pretrained), a .gguf file, or ollama:NAME",
            )
        return read_gguf(candidate, origin=model), True
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            ggufs = sorted(candidate.glob("*.gguf"))
            if len(ggufs) == 1:
                return read_gguf(ggufs[0], origin=model), True
            if len(ggufs) > 1:
                names = ", ".join(g.name for g in ggufs[:6])
                raise UserError(
                    f"model {model!r}: {len(ggufs)} GGUF files in this folder ({names})",
                    hint='name the one to train from: model="' + str(candidate / ggufs[0].name) + '"',
                )
        check_model_dir(candidate)
        return str(candidate.resolve()), True
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or model.lower().endswith(".gguf"):
        what = "model file" if model.lower().endswith(".gguf") else "model directory"
        raise UserError(
            f"{what} not found: {model}",
            hint="check the path (a model directory, a .gguf file), or use a hub id like microsoft/phi-2",
        )
    return model, False


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise UserError(
            f"{path}: not a model directory (no config.json, no .gguf)",
            hint="use a directory saved by save_pretrained, or a .gguf file",
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise UserError(f"{path}: no weights (*.safetensors or *.bin)", hint="save the model with save_pretrained")
    if not any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    ):
        raise UserError(f"{path}: no tokenizer files", hint="save the tokenizer into the same directory")


def run_base_model(run: dict) -> tuple[str, bool]:
    """(path or hub id, is_local) of the base model a run trained on (backend.json's model_path, else the recipe's);
    UserError when that model is no longer where the run found it. A GGUF base's de-quantized copy is made again
    from its GGUF when the cache no longer holds it."""
    backend = run["backend"] or {}
    model_path = backend.get("model_path") or run["recipe"]["model"]
    record = backend.get("gguf")
    if record and not entry_ok(Path(model_path)):
        try:
            gguf, _ = locate(record["origin"])
        except UserError as e:
            raise UserError(
                f"{run['dir']}: the run's base model was {record['origin']}, de-quantized into {model_path}; that "
                f"copy is gone and the GGUF is not available: {e.message}",
                hint="restore the GGUF (or Ollama model) the run trained from",
            ) from None
        if not isinstance(gguf, GGUF) or content_hash(Path(gguf.file)) != record["sha256"]:
            raise UserError(
                f"{run['dir']}: the run's base model {record['origin']} has changed since the run trained on it",
                hint="restore the GGUF the run trained from (its sha256 is in backend.json)",
            )
        return str(dense_checkpoint(gguf, record["dtype"]).path), True
    try:
        path, local = locate(model_path)
    except UserError as e:
        raise UserError(
            f"{run['dir']}: the run's base model is not available: {e.message}",
            hint="restore that model directory, or set model_path in backend.json to where it is now",
        ) from None
    if isinstance(path, GGUF):  # a run that failed before backend.json: the recipe's GGUF, as training de-quantizes
        return str(dense_checkpoint(path, "float32").path), True
    return path, local


def check_hub_model(model_id: str, timeout: float = 3.0) -> None:
    """A hub id must be in the local cache or the hub reachable: say so at once instead of hanging on retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return
    hint = "download it where there is internet and set `model` to its local directory"
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"model {model_id!r} is not on this machine, and the hub is switched off (HF_HUB_OFFLINE)", hint=hint
        )
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        raise UserError(
            f"model {model_id!r} is not on this machine, and {host} is unreachable (offline?)", hint=hint
        ) from None


def model_max_length(model: str | GGUF) -> int | None:
    """The longest sequence a local model allows (its config, or a GGUF's context length), if it says."""
    if isinstance(model, GGUF):
        return model.context_length
    config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None
