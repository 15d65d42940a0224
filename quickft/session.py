"""A finished run loaded for answering: its base and adapter (or its full weights, or its merged export), its
tokenizer, and how it frames a message as training framed prompts. `quickft chat`, `eval`, `serve`, export's load-back
and the studio all answer through it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from quickft.backends import choose_backend, load, prepare_tokenizer, private_by_default, quiet_libraries
from quickft.data.encode import chat_prompt, format_prompt
from quickft.hardware import describe
from quickft.models import run_base_model
from quickft.recipe import Recipe, Scratch, recipe_from_dict
from quickft.rundir import open_run


@dataclass
class Session:
    model: object
    tokenizer: object
    recipe: Recipe
    style: str
    """chat (multi-turn, chat template), qa (single-turn prompt template) or completion (continue the text)."""
    params: dict
    base: object = None
    """base(session): a context manager under which the session answers as the base model (no fine-tuning)."""
    history: list[dict] = field(default_factory=list)
    description: str = ""
    system: str | None = None
    """A system prompt put before every conversation (chat-format runs only; /reset keeps it)."""
    example: str | None = None
    """A message as the model saw them in training (the user's part of a test case), to show the framing."""
    base_label: str = "base model"
    show_thinking: bool = True
    """A reasoning model's thinking (<think>...</think>) is shown dim; False hides it (--hide-thinking)."""


def chat_style(recipe: Recipe) -> str:
    """chat (multi-turn, chat template), completion (continue the text) or qa (single-turn prompt template)."""
    if recipe.data.use_chat_template:
        return "chat"
    return {"chat": "chat", "sharegpt": "chat", "text": "completion"}.get(recipe.data.format, "qa")


def load_session(run_dir: str | Path, *, with_base: bool = False, backend: str | None = None) -> Session:
    """Load the run's base model + adapter (or its full model) with the same backend policy as training, or with
    `backend` ("peft") when given."""
    run = open_run(run_dir)
    recipe = recipe_from_dict(run["recipe"])
    if backend:
        recipe = replace(recipe, backend=backend)
    run_dir = Path(run_dir)

    if recipe.mode != "full" or with_base:
        model_path, local = run_base_model(run)
    else:
        model_path, local = None, True
    private_by_default(local)
    choice = choose_backend(recipe, strict=False)  # trained where Unsloth ran, chatting where it can't: PEFT
    if recipe.mode == "full":
        loaded = load(recipe, choice, str(run_dir), local=True, for_training=False)
        model, what, choice = loaded.model, f"the fully fine-tuned model in {run_dir}", loaded.choice
        base = _separate_base(recipe, choice, model_path, local) if with_base else None
    else:
        loaded = load(recipe, choice, model_path, local=local, for_training=False)
        choice = loaded.choice
        from peft import PeftModel

        model = PeftModel.from_pretrained(loaded.model, run_dir)
        model.eval()
        what = f"{model_path} + the adapter in {run_dir}"
        base = lambda session: model.disable_adapter()  # noqa: E731  (same shape as _separate_base's swap)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    prepare_tokenizer(tokenizer, recipe)
    style = chat_style(recipe)
    params = default_params(recipe)
    description = f"loaded {what} on {describe(choice.hardware)} with {choice.summary(recipe.mode)}"
    session = Session(model, tokenizer, recipe, style, params, base=base, description=description)
    session.example = training_example(run_dir, recipe, style)
    if isinstance(recipe.model, Scratch):
        session.base_label = "base model (random weights: this run trained from scratch)"
    return session


def default_params(recipe: Recipe) -> dict:
    """Generation settings when none are given: the recipe's, else greedy for Q&A and 0.7 for chat data."""
    temperature = recipe.temperature
    if temperature is None:
        temperature = 0.7 if chat_style(recipe) == "chat" else 0.0
    return {"temperature": temperature, "top_p": recipe.top_p, "max_new_tokens": recipe.max_new_tokens}


def training_example(run_dir: Path, recipe: Recipe, style: str) -> str | None:
    """The user's part of the run's first test case: what a message looked like in training ('¿Cuánto es 3 + 4?')."""
    samples = run_dir / "samples.jsonl"
    if style != "qa" or not samples.is_file():
        return None
    first = next((line for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()), None)
    if first is None:
        return None
    prompt = json.loads(first)["prompt"]
    before, _, after = recipe.data.prompt_template.partition("{prompt}")
    if prompt.startswith(before) and prompt.endswith(after):
        return prompt[len(before) : len(prompt) - len(after)]
    return None


def framing(session: Session) -> str:
    """How the model expects messages, said when the chat starts and with /help."""
    if session.style == "chat":
        template = session.recipe.data.chat_template or "the tokenizer's own"
        return f"multi-turn: messages go through the {template} chat template; the conversation is remembered"
    if session.style == "completion":
        return "text completion: the model continues the text you type (trained on plain text, not questions)"
    example = f"; trained on messages like {session.example!r}" if session.example else ""
    return (
        f"single-turn: each message is put in the training template {session.recipe.data.prompt_template!r} and "
        f"answered on its own{example}"
    )


def _separate_base(recipe: Recipe, choice, model_path: str, local: bool):
    """For a full fine-tune the base is another set of weights: load it once, answer with it on demand."""
    base_model = load(recipe, choice, model_path, local=local, for_training=False).model
    base_model.eval()

    @contextlib.contextmanager
    def swap(session: Session):
        tuned, session.model = session.model, base_model
        try:
            yield
        finally:
            session.model = tuned

    return swap


def build_prompt(session: Session, user_text: str) -> str:
    """Frame the user's text exactly as training framed prompts (template or chat template with history)."""
    if session.style == "chat":
        system = [{"role": "system", "content": session.system}] if session.system else []
        return chat_prompt(system + session.history + [{"role": "user", "content": user_text}], session.tokenizer)
    if session.style == "completion":
        return user_text
    return format_prompt(user_text, session.recipe.data)


def load_plain(model_dir: Path, device: str | None = None):
    """(model, tokenizer, dtype, device) of a plain Hugging Face directory (a merged export), loaded with transformers
    alone: in its saved dtype on the GPU where it fits (load_back_device), in float32 on the CPU otherwise (16-bit
    matmuls on a CPU are slow and unlike any GPU's)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if device is None:
        free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
        device = load_back_device(sum(f.stat().st_size for f in model_dir.glob("*.safetensors")), free)
    dtype = "float32" if device == "cpu" else saved_dtype(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), local_files_only=True)
    model.to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_dir), dtype, device


def load_merged(model_dir: Path, recipe: Recipe) -> Session:
    """A merged export as a Session: the weights with transformers alone (as export's check loads them back), the
    framing from the run it came from (`recipe`)."""
    private_by_default(True)
    quiet_libraries()
    model, tokenizer, dtype, device = load_plain(model_dir)
    prepare_tokenizer(tokenizer, recipe)
    description = f"loaded the merged model in {model_dir} with transformers alone, {dtype} on {device}"
    return Session(model, tokenizer, recipe, chat_style(recipe), default_params(recipe), description=description)


def load_back_device(model_bytes: int, free_gpu_bytes: int | None) -> str:
    """Where the merged model is loaded back: the GPU if it fits there with room for generation (a fifth more),
    else the CPU (a 16-bit Phi-2 merge is 5.6 GB; a 4 GB card that trained it in 4-bit cannot hold it)."""
    if free_gpu_bytes is None or model_bytes * 1.2 > free_gpu_bytes:
        return "cpu"
    return "cuda"


def saved_dtype(model_dir: Path) -> str:
    """The dtype a model directory's weights were saved in (config.json), float16 where it does not say."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    value = config.get("dtype") or config.get("torch_dtype") or "float16"
    return value if value in ("float32", "float16", "bfloat16") else "float16"
