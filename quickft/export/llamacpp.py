"""llama.cpp for `quickft export`: its converter (HF directory -> GGUF), its quantizer, and loading a GGUF back.

Nothing here is llama.cpp code: the converter is llama.cpp's own `convert_hf_to_gguf.py`, found in this order:
  1. $QUICKFT_LLAMA_CPP: a llama.cpp checkout (or any folder holding convert_hf_to_gguf.py and its gguf-py/);
  2. the copy `python -m quickft.export.llamacpp install` keeps under <venv>/share/quickft/llama.cpp, taken from the
     llama-cpp-python source distribution (which vendors llama.cpp) that it also builds and installs;
  3. convert_hf_to_gguf.py on PATH (some llama.cpp packages install it there).
Quantizing to k-quants (q4_k_m) needs llama.cpp's C library: llama-cpp-python's binding of `llama_model_quantize`,
or a `llama-quantize` on PATH. Loading back for the check uses llama-cpp-python.

Run as a module it is also the converter's launcher (`python -m quickft.export.llamacpp convert ...`), so that a
tokenizer llama.cpp has no fingerprint for can be named (see `pre_tokenizer_name`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from quickft import noise
from quickft.errors import UserError

LLAMA_CPP_PYTHON = "0.3.36"
"""The llama-cpp-python release `install` builds, and whose vendored llama.cpp converter it keeps (tested here)."""
CONVERTER_FILES = (
    "convert_hf_to_gguf.py",
    "convert_lora_to_gguf.py",
    "conversion",
    "gguf-py",
    "LICENSE",
    "models/templates",
)
"""What `install` keeps of the vendored llama.cpp: the converters (a model; a PEFT LoRA adapter), their license, and
llama.cpp's verbatim copies of published chat templates (models/templates, 300 kB), which quickft's chat-template
tests train on."""
CONVERTER_REQUIREMENTS = ("sentencepiece>=0.1.98,<0.3.0", "protobuf>=4.21", "gguf>=0.17", "safetensors")
"""What llama.cpp's converters import beyond torch, transformers and numpy (requirements-convert_hf_to_gguf.txt),
for the architectures quickft trains: sentencepiece is imported by every Llama-family conversion (it tries a
SentencePiece tokenizer first, even for byte-level BPE ones), protobuf by SentencePiece's model reader. The file's
own pins (torch 2.11, transformers 4.57) are not installed: they would replace the stack quickft trains with.
mistral-common is needed only for Mistral's own format, and said so when missing."""


def install_command() -> str:
    return f"{sys.executable} -m quickft.export.llamacpp install"


def kept_copy() -> Path:
    """Where `install` keeps llama.cpp's converter, inside this Python environment."""
    return Path(sys.prefix) / "share" / "quickft" / "llama.cpp"


def find_converter() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py; UserError with the install command if there is none."""
    explicit = os.environ.get("QUICKFT_LLAMA_CPP")
    if explicit:
        if (Path(explicit) / "convert_hf_to_gguf.py").is_file():
            return Path(explicit)
        raise UserError(
            f"QUICKFT_LLAMA_CPP={explicit}: no convert_hf_to_gguf.py there",
            hint=f"point it at a llama.cpp checkout, or unset it and run: {install_command()}",
        )
    if (kept_copy() / "convert_hf_to_gguf.py").is_file():
        return kept_copy()
    if on_path := shutil.which("convert_hf_to_gguf.py"):
        return Path(on_path).resolve().parent
    raise UserError(
        "no GGUF converter found: GGUF export uses llama.cpp's convert_hf_to_gguf.py, which is not installed",
        hint=f"install it (builds llama-cpp-python {LLAMA_CPP_PYTHON}, a few minutes): {install_command()}   "
        "(or set QUICKFT_LLAMA_CPP to a llama.cpp checkout)",
    )


def find_lora_converter() -> Path:
    """llama.cpp's convert_lora_to_gguf.py, in the converter's folder (an install from before quickft kept it is
    told to install again)."""
    folder = find_converter()
    if (folder / "convert_lora_to_gguf.py").is_file():
        return folder / "convert_lora_to_gguf.py"
    raise UserError(
        f"{folder} has llama.cpp's model converter but not its LoRA converter (convert_lora_to_gguf.py)",
        hint=f"install again, which keeps both: {install_command()}   (or point QUICKFT_LLAMA_CPP at a llama.cpp "
        "checkout)",
    )


def find_quantizer() -> str | None:
    """'binding' (llama-cpp-python's llama_model_quantize), a llama-quantize path, or None."""
    if has_llama_cpp_python():
        return "binding"
    return shutil.which("llama-quantize")


def has_llama_cpp_python() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# ---------------------------------------------------------------------------------------------- tokenizer


def pre_tokenizer_name(tokenizer_json: Path) -> str | None:
    """llama.cpp's name for a pre-tokenizer with the same rules as this tokenizer's, or None.

    llama.cpp's converter recognises a tokenizer by a hash of how it splits a test text, so it knows only published
    tokenizers: any tokenizer trained anew (quickft's Scratch models) is refused, even when its pre-tokenizer is one
    llama.cpp implements. These are the ones whose rules give the same tokens (the export then checks it: llama.cpp's
    token ids against the Hugging Face tokenizer's, prompt by prompt):
    - GPT-2's byte-level regex alone: "gpt-2";
    - digits one by one, then GPT-2's byte-level regex (StarCoder's): "starcoder";
    - digits one by one, then byte-level with no word regex, so merges cross spaces (quickft's Scratch tokenizer):
      "superbpe", which splits off runs of digits and nothing else. The same tokens as long as the vocabulary has no
      token of two or more digits, which such a tokenizer never learns (checked here).
    """
    data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or data.get("normalizer"):
        return None
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]

    def byte_level(step: dict, regex: bool) -> bool:
        return (
            step.get("type") == "ByteLevel"
            and bool(step.get("use_regex", True)) is regex
            and not step.get("add_prefix_space")
        )

    digits_first = len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
    if len(steps) == 1 and byte_level(steps[0], regex=True):
        return "gpt-2"
    if digits_first and byte_level(steps[1], regex=True):
        return "starcoder"
    if digits_first and byte_level(steps[1], regex=False):
        tokens = list(model.get("vocab") or {}) + [t["content"] for t in data.get("added_tokens", [])]
        if not any(len(t) > 1 and any(c.isdigit() for c in t) for t in tokens):
            return "superbpe"
    return None


# ---------------------------------------------------------------------------------------------- converting


def convert(model_dir: Path, outfile: Path, outtype: str, *, converter: Path, name: str) -> None:
    """llama.cpp's converter on a Hugging Face directory, in its own process (it puts its own gguf-py first)."""
    command = [sys.executable, "-m", "quickft.export.llamacpp", "convert", str(converter), str(model_dir)]
    command += ["--outfile", str(outfile), "--outtype", outtype, "--model-name", name]
    tokenizer_json = model_dir / "tokenizer.json"
    name = pre_tokenizer_name(tokenizer_json) if tokenizer_json.is_file() else None
    if name is not None:
        command += ["--quickft-pre", name]
    _run_converter(command, outfile, "converter")


def convert_lora(run_dir: Path, base_dir: Path, outfile: Path, outtype: str) -> None:
    """llama.cpp's LoRA converter on a run's PEFT adapter, with the base's config (and tokenizer) from `base_dir`."""
    command = [sys.executable, str(find_lora_converter()), "--base", str(base_dir), "--outfile", str(outfile)]
    _run_converter([*command, "--outtype", outtype, str(run_dir)], outfile, "LoRA converter")


def _run_converter(command: list[str], outfile: Path, which: str) -> None:
    """A converter in its own process; its known failures are UserErrors (exit 2) naming the fix, the rest a crash."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 0 and outfile.is_file():
        show_under_debug(f"llama.cpp's {which}", result.stderr)
        return
    stderr = result.stderr or ""
    lines = [line for line in (stderr or result.stdout).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit code {result.returncode}"
    # "No module named 'x'", or "import of x halted; None in sys.modules" where an environment masks it
    missing = re.search(r"No module named '([^']+)'|import of (\S+) halted", stderr)
    if missing:
        module = (missing.group(1) or missing.group(2)).split(".")[0]
        package = {"google": "protobuf", "mistral_common": "mistral-common"}.get(module, module)
        raise UserError(
            f"llama.cpp's {which} needs the Python module {module!r}, which is not installed in {sys.prefix}",
            hint=f"install the converters' dependencies: {install_command()}   (or only that one: "
            f"{sys.executable} -m pip install {package})",
        )
    if "pre-tokenizer was not recognized" in stderr:
        raise UserError(
            f"llama.cpp's {which} does not know this model's tokenizer ({last})",
            hint="GGUF needs a tokenizer llama.cpp supports; `--to merged` still works for Hugging Face tools",
        )
    if "not supported" in last.lower() or "NotImplementedError" in last:
        raise UserError(f"llama.cpp's {which} cannot convert this model: {last}", hint="use --to merged")
    raise RuntimeError(f"llama.cpp's {which} failed: {last}\n{stderr[-4000:]}")


def _convert_main(argv: list[str]) -> None:
    """`python -m quickft.export.llamacpp convert CONVERTER_DIR ARGS... [--quickft-pre NAME]`: run llama.cpp's converter,
    naming the pre-tokenizer (NAME) only where its own fingerprint table has no entry for this tokenizer."""
    converter, *args = argv
    pre = None
    if "--quickft-pre" in args:
        i = args.index("--quickft-pre")
        pre = args[i + 1]
        del args[i : i + 2]
    sys.path.insert(0, converter)
    sys.argv = [str(Path(converter) / "convert_hf_to_gguf.py"), *args]
    import convert_hf_to_gguf  # noqa: I001  (llama.cpp's, from the converter folder)

    if pre is not None:
        try:
            from conversion.base import TextModel  # llama.cpp since 2026: the converter split into a package
        except ImportError:
            TextModel = getattr(convert_hf_to_gguf, "TextModel", None) or convert_hf_to_gguf.Model  # noqa: N806
        known = TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer) -> str:
            try:
                return known(self, tokenizer)
            except NotImplementedError:  # no fingerprint: a tokenizer trained anew, with `pre`'s exact rules
                return pre

        TextModel.get_vocab_base_pre = get_vocab_base_pre
    convert_hf_to_gguf.main()


def quantize(infile: Path, outfile: Path, quant: str) -> None:
    """A k-quant (q4_k_m) from a 16-bit GGUF, with llama.cpp's quantizer, in its own process (it logs every tensor)."""
    tool = find_quantizer()
    if tool is None:
        raise UserError(
            f"--quant {quant} needs llama.cpp's quantizer, which is not installed (f16 and q8_0 do not)",
            hint=f"install it: {install_command()}   (or put llama.cpp's llama-quantize on PATH)",
        )
    if tool == "binding":
        command = [sys.executable, "-m", "quickft.export.llamacpp", "quantize", str(infile), str(outfile), quant]
    else:
        command = [tool, str(infile), str(outfile), quant.upper()]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not outfile.is_file():
        raise RuntimeError(f"llama.cpp's quantizer failed: {(result.stderr or result.stdout)[-2000:]}")
    show_under_debug("llama.cpp's quantizer", result.stderr)


def _quantize_main(infile: str, outfile: str, quant: str) -> None:
    """`python -m quickft.export.llamacpp quantize IN OUT QUANT`: llama-cpp-python's binding of llama_model_quantize."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(infile.encode(), outfile.encode(), params)
    sys.exit(1 if status != 0 else 0)


# ---------------------------------------------------------------------------------------------- reading back


def metadata(path: Path) -> dict:
    """The GGUF's tokenizer metadata that decides how it is prompted and when it stops (read with `gguf`)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    return {
        "architecture": value("general.architecture"),
        "file_type": value("general.file_type"),
        "pre_tokenizer": value("tokenizer.ggml.pre"),
        "bos_token_id": value("tokenizer.ggml.bos_token_id"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "padding_token_id": value("tokenizer.ggml.padding_token_id"),
        "add_bos_token": value("tokenizer.ggml.add_bos_token"),
        "chat_template": value("tokenizer.chat_template"),
        "n_tokens": len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0,
    }


class LlamaCppFailed(RuntimeError):
    """llama.cpp could not load or run the GGUF (it aborts the process on a malformed file: it runs in a child)."""


def greedy_answers(
    path: Path, prompts: list[str], *, max_new_tokens: int, n_ctx: int, lora: Path | None = None
) -> list[dict]:
    """Load a GGUF with llama-cpp-python (and a GGUF LoRA adapter on it) and answer each prompt greedily: its prompt
    ids and generated ids (up to and including the end-of-generation token, as transformers' generate returns them)."""
    return _in_child("greedy", path, lora, prompts=prompts, max_new_tokens=max_new_tokens, n_ctx=n_ctx)


def next_token_agreement(path: Path, answers: list[dict], *, lora: Path | None = None) -> list[dict]:
    """For each reference answer (its `prompt` text, `prompt_ids` and answer `ids`), how llama.cpp tokenizes the
    prompt, and at how many of the answer's positions llama.cpp's most likely next token, given the reference's
    tokens so far (teacher forcing), is the reference's own: a quantized model's greedy answers drift apart after one
    near-tie, while this counts every position once."""
    n_ctx = max(len(a["prompt_ids"]) + len(a["ids"]) for a in answers) + 8
    sequences = [{"prompt": a["prompt"], "prompt_ids": a["prompt_ids"], "ids": a["ids"]} for a in answers]
    return _in_child("agree", path, lora, sequences=sequences, n_ctx=n_ctx)


def _in_child(task: str, path: Path, lora: Path | None, **request):
    """llama.cpp's work in a process of its own: llama.cpp aborts the whole process on a GGUF it cannot read, which
    must fail the check, not kill quickft (and leave a half export behind)."""
    request |= {"task": task, "path": str(path), "lora": str(lora) if lora else None}
    done = subprocess.run(
        [sys.executable, "-m", "quickft.export.llamacpp", "answer"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("#", "["))]
        why = lines[-1].strip() if lines else f"exit code {done.returncode}"
        what = Path(path).name + (f" + {Path(lora).name}" if lora else "")
        raise LlamaCppFailed(f"llama.cpp failed on {what}: {why}")
    show_under_debug(f"llama-cpp-python ({task})", done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def show_under_debug(which: str, stderr: str | None) -> None:
    """llama.cpp's own log of work that succeeded (tensors loaded and written, context sizes, its warnings about them)
    reads as errors and says nothing about the export: kept off the screen, shown under --debug, marked as such."""
    if noise.debugging() and stderr and stderr.strip():
        print(f"[quickft --debug: {which}'s stderr, hidden without --debug]", file=sys.stderr)
        print(stderr.rstrip(), file=sys.stderr)


def _answer_main() -> None:
    """`python -m quickft.export.llamacpp answer` < a JSON request (see _in_child): prints the result as one JSON line."""
    request = json.loads(sys.stdin.read())
    task = request.pop("task")
    print(json.dumps(_greedy(**request) if task == "greedy" else _agree(**request)))


def _llama(path: str, lora: str | None, n_ctx: int, **more):
    from llama_cpp import Llama

    # llama.cpp allocates at least 256 positions anyway; more than the prompts need costs only KV-cache memory
    return Llama(
        model_path=path,
        n_ctx=max(n_ctx, 256),
        n_threads=os.cpu_count() or 1,
        verbose=False,
        seed=0,
        **({"lora_path": lora} if lora else {}),
        **more,
    )


def _tokenize(llm, prompt: str) -> list[int]:
    # add_bos=True: llama.cpp adds BOS where the GGUF says the model wants one, as llama.cpp and Ollama do
    return list(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))


def _greedy(path: str, lora: str | None, prompts: list[str], max_new_tokens: int, n_ctx: int) -> list[dict]:
    llm = _llama(path, lora, n_ctx)
    eos = llm.token_eos()
    results = []
    for prompt in prompts:
        ids = _tokenize(llm, prompt)
        generated = []
        if len(ids) + max_new_tokens > llm.n_ctx():  # tokenized unlike the tokenizer: that difference is the result
            results.append({"prompt_ids": ids, "ids": generated})
            continue
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            generated.append(token)
            if token == eos or len(generated) >= max_new_tokens:  # where transformers' generate stops
                break
        results.append({"prompt_ids": ids, "ids": generated})
    llm.close()
    return results


def _agree(path: str, lora: str | None, sequences: list[dict], n_ctx: int) -> list[dict]:
    import numpy as np

    llm = _llama(path, lora, n_ctx, logits_all=True)
    results = []
    for seq in sequences:
        tokens = seq["prompt_ids"] + seq["ids"]
        llm.reset()
        llm.eval(tokens)
        start = len(seq["prompt_ids"])
        predicted = np.asarray(llm.scores[start - 1 : len(tokens) - 1]).argmax(axis=-1)
        matches = int((predicted == np.asarray(seq["ids"])).sum()) if seq["ids"] else 0
        results.append({"prompt_ids": _tokenize(llm, seq["prompt"]), "matches": matches, "positions": len(seq["ids"])})
    llm.close()
    return results


# ---------------------------------------------------------------------------------------------- installing


DEFAULT_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
"""A CPU build for any x86-64 (no -march=native: what is built here may run on another machine), without the
multimodal library (about a fifth of the build; export never loads it)."""


def build_arguments(env) -> list[str]:
    """pip's options for building llama-cpp-python: from the index's source distribution by name, so pip's wheel
    cache keeps the build under that name and version, and a second install on this machine takes seconds, not the
    8-13 minutes of a build. A CMAKE_ARGS of the user's own (e.g. "-DGGML_CUDA=on") is another build than the one the
    cache may hold under the same name: it is built afresh, and not cached."""
    arguments = ["--no-binary", "llama-cpp-python"]
    if env.get("CMAKE_ARGS"):
        arguments.append("--no-cache-dir")
    return arguments


def install() -> Path:
    """Download llama-cpp-python's source distribution once, build and install it (the quantizer and loader), and
    keep its vendored llama.cpp converter under kept_copy()."""
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory(prefix="quickft-llama-cpp-") as tmp:
        pip = [sys.executable, "-m", "pip"]
        spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON}"
        # the source distribution, for the converter it vendors (pip's download cache keeps it)
        subprocess.run([*pip, "download", "--no-deps", "--no-binary", ":all:", spec, "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        print(
            f"quickft: installing llama-cpp-python {LLAMA_CPP_PYTHON} (llama.cpp's library: the GGUF loader and "
            f"quantizer) and the converters' dependencies ({', '.join(CONVERTER_REQUIREMENTS)}) into {sys.prefix}. "
            "The first time, pip compiles llama.cpp for this CPU: 5 to 13 minutes on 2 cores, with only pip's "
            "'Building wheel ... still running' lines meanwhile; pip's wheel cache keeps the build, so another "
            "install on this machine takes seconds.",
            flush=True,
        )
        subprocess.run(
            [*pip, "install", *build_arguments(os.environ), spec, *CONVERTER_REQUIREMENTS],
            check=True,
            env=os.environ | {"CMAKE_ARGS": os.environ.get("CMAKE_ARGS", DEFAULT_CMAKE_ARGS)},
        )
        target = kept_copy()
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(sdist) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith(prefix)
                and any(
                    m.name[len(prefix) :] == f or m.name[len(prefix) :].startswith(f + "/") for f in CONVERTER_FILES
                )
                and (m.isfile() or m.isdir())
            ]
            for member in members:
                member.name = member.name[len(prefix) :]
            archive.extractall(target, members=members, filter="data")
    if not (target / "convert_hf_to_gguf.py").is_file():
        raise RuntimeError(f"llama-cpp-python {LLAMA_CPP_PYTHON}'s source has no convert_hf_to_gguf.py")
    print(f"llama.cpp's converter kept in {target}; llama-cpp-python {LLAMA_CPP_PYTHON} installed")
    return target


if __name__ == "__main__":
    verb, *rest = sys.argv[1:] or ["help"]
    if verb == "convert":
        _convert_main(rest)
    elif verb == "answer":
        _answer_main()
    elif verb == "quantize":
        _quantize_main(*rest)
    elif verb == "install":
        install()
    else:
        print(
            "usage: python -m quickft.export.llamacpp install | convert DIR ARGS... | quantize IN OUT QUANT",
            file=sys.stderr,
        )
        sys.exit(2)
