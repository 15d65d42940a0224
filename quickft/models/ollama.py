"""`model="ollama:NAME[:TAG]"`: the GGUF behind a model Ollama has pulled, found through Ollama's own files (its
models folder, the manifest of NAME:TAG, the model layer's blob named by its sha256)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from quickft.errors import UserError
from quickft.models.gguf import GGUF, read_gguf

OLLAMA_PREFIX = "ollama:"


def ollama_models_dir() -> Path:
    """Where Ollama keeps its models: $OLLAMA_MODELS, else ~/.ollama/models (the Linux service's own is
    /usr/share/ollama/.ollama/models: set OLLAMA_MODELS to it)."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def parse_ollama_name(name: str) -> tuple[str, str, str, str]:
    """ollama:[HOST/][NAMESPACE/]MODEL[:TAG] -> (host, namespace, model, tag), with Ollama's defaults."""
    rest = name.removeprefix(OLLAMA_PREFIX)
    path, tag = rest, "latest"
    if ":" in rest.rsplit("/", 1)[-1]:
        path, tag = rest.rsplit(":", 1)
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 3 or not tag or any(p in (".", "..") for p in [*parts, tag]):
        raise UserError(
            f"model {name!r}: not an Ollama model name", hint="write it as Ollama does: ollama:smollm2:135m"
        )
    host, namespace = "registry.ollama.ai", "library"
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    return host, namespace, model, tag


def ollama_gguf(name: str) -> GGUF:
    """The GGUF behind an Ollama model: its manifest's model layer, a blob named by its sha256."""
    host, namespace, model, tag = parse_ollama_name(name)
    root = ollama_models_dir()
    manifest_path = root / "manifests" / host / namespace / model / tag
    short = name.removeprefix(OLLAMA_PREFIX)
    if not manifest_path.is_file():
        known = sorted(
            f"{p.parent.name}:{p.name}" for p in (root / "manifests" / host / namespace).glob("*/*") if p.is_file()
        )
        hint = f"`ollama pull {short}` first, or set OLLAMA_MODELS to the folder Ollama keeps its models in"
        if known:
            hint += f" (found here: {', '.join(known[:8])})"
        raise UserError(f"model {name!r}: Ollama has no such model in {root} (no {manifest_path})", hint=hint)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        layers = manifest["layers"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{manifest_path}: not an Ollama manifest ({e})", hint=f"`ollama pull {short}` again") from None
    models = [layer for layer in layers if layer.get("mediaType") == "application/vnd.ollama.image.model"]
    adapters = [layer for layer in layers if layer.get("mediaType") == "application/vnd.ollama.image.adapter"]
    if len(models) != 1:
        raise UserError(f"{manifest_path}: {len(models)} model layers, expected one", hint=f"`ollama pull {short}`")
    if adapters:
        raise UserError(
            f"model {name!r}: this Ollama model applies {len(adapters)} adapter(s) on top of its base; quickft trains "
            "from a single GGUF",
            hint="train from its base model (the FROM line of `ollama show --modelfile " + short + "`)",
        )
    digest = str(models[0].get("digest", ""))
    blob = root / "blobs" / digest.replace(":", "-")
    if not digest.startswith("sha256:") or not blob.is_file():
        raise UserError(f"model {name!r}: its model blob {blob} is missing", hint=f"`ollama pull {short}` again")
    gguf = read_gguf(blob, origin=name)
    gguf.ollama = {
        "name": f"{model}:{tag}" if host == "registry.ollama.ai" and namespace == "library" else short,
        "manifest": str(manifest_path),
        "digest": digest,
        "other_layers": sorted({layer.get("mediaType", "?").rsplit(".", 1)[-1] for layer in layers} - {"model"}),
    }
    return gguf
