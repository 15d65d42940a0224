"""The `quickft` command: parses arguments, calls one function per verb, maps errors to exit codes.

Heavy libraries (torch, transformers, trl, unsloth) are imported inside the verbs, so `quickft --help` is instant.
Exit codes: 0 ok, 1 crash (a bug: traceback with --debug), 2 bad input (one clear message), 3 another process of a
several-process run was lost (its machine stopped), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from quickft.errors import ProcessLost, RunInterrupted, UserError


def _labelled(params: list) -> list:
    """Help labels that say what a parameter takes: the argument's own name (RECIPE), a metavar (DIR, N), nothing for
    a flag, instead of the type names typer prints (<str>, <bool>)."""
    for param in params:
        if isinstance(param, TyperArgument) or (param.metavar is None and getattr(param, "is_flag", False)):
            param.display_type_rich = lambda ctx: None
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _labelled(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _labelled(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Quick LoRA / QLoRA / full fine-tuning of causal language models, on the GPU you have (or none).",
    epilog="Start with [bold]quickft run recipes/tiny_math.py[/bold] (offline demo, ~2 min on a CPU), then "
    "[bold]quickft chat outputs/tiny_math[/bold]. [bold]quickft VERB --help[/bold] shows each verb's examples.",
)
_debug = False


def _examples(*lines: str) -> str:
    """A verb's help epilog: one example command per line (rich markup: each line its own paragraph)."""
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  {line}" for line in lines)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    global _debug
    _debug = debug or _debug


Backend = Annotated[
    str | None,
    typer.Option(
        "--backend", metavar="auto|unsloth|peft", help="Default auto: picked from the hardware.", show_default=False
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Recipe = Annotated[str, typer.Argument(metavar="RECIPE", help="Recipe file, e.g. recipes/tiny_math.py")]
Overrides = Annotated[
    list[str] | None, typer.Argument(metavar="KEY=VALUE", help="Recipe overrides: max_steps=20 lora.r=8")
]
RunDir = Annotated[str, typer.Argument(metavar="RUN_DIR", help="A finished run, e.g. outputs/tiny_math")]
# serve's and studio's listening options
Port = Annotated[int, typer.Option("--port", metavar="N", min=0, max=65535, help="0: any free port.")]
Host = Annotated[
    str, typer.Option("--host", metavar="ADDR", help="Address to listen on (other than loopback: --allow-remote).")
]
AllowRemote = Annotated[bool, typer.Option("--allow-remote", help="Allow a --host that other machines can reach.")]


@app.command(
    cls=_Command,
    epilog=_examples(
        "quickft run recipes/tiny_math.py",
        "quickft run recipes/tiny_math.py max_steps=300 learning_rate=2e-3",
        "quickft run recipes/tiny_math.py --resume outputs/tiny_math",
        "quickft run recipes/phi2_math.py --gpus 2    # data-parallel: torchrun, one process per GPU",
        "torchrun --nproc-per-node 2 -m quickft run recipes/tiny_math.py    # the same, started by hand (CPU: gloo)",
        "quickft run recipes/phi2_math.py --nnodes 2 --node-rank 0 --master 10.0.0.1:29500    # and --node-rank 1 "
        "on the other machine (docs/several-gpus.md)",
    ),
)
def run(
    recipe: Recipe,
    overrides: Overrides = None,
    output_dir: Annotated[
        str | None, typer.Option("--output-dir", metavar="DIR", help="Run directory (default outputs/<name>).")
    ] = None,
    backend: Backend = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print only the final report.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", metavar="[RUN_DIR]", help="Continue an interrupted run (default: this recipe's newest)."
        ),
    ] = False,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            metavar="N",
            help="Train on N GPUs of this machine (starts torchrun: one process per GPU; with --nnodes: all by default).",
        ),
    ] = None,
    nnodes: Annotated[
        int | None,
        typer.Option("--nnodes", metavar="N", help="Train on N machines (torchrun's c10d rendezvous at --master)."),
    ] = None,
    node_rank: Annotated[
        int | None, typer.Option("--node-rank", metavar="R", help="This machine's place: 0 at --master, 1, 2 ...")
    ] = None,
    master: Annotated[
        str | None,
        typer.Option(
            "--master", "--rdzv-endpoint", metavar="ADDR:PORT", help="Node 0's address and a free port, on every node."
        ),
    ] = None,
) -> None:
    """Fine-tune a model as a recipe says, and write a run directory."""
    if backend not in (None, "auto", "unsloth", "peft"):
        raise UserError(f"--backend {backend}: unknown backend", hint="use auto, unsloth or peft")
    # several processes (--gpus N, --nnodes N, or srun on several nodes): torchrun starts them, running this same
    # command without those options, and this one waits for them
    from quickft.launch import launch

    argv = sys.argv[1:] if _argv is None else _argv
    if (code := launch(argv, gpus=gpus, nnodes=nnodes, node_rank=node_rank, master=master)) is not None:
        raise typer.Exit(code)
    overrides = overrides or []
    resume_dir = None
    if resume:  # `--resume RUN_DIR`: the run directory arrives among the key=value arguments
        dirs = [o for o in overrides if "=" not in o]
        overrides = [o for o in overrides if "=" in o]
        resume_dir = dirs[0] if dirs else "latest"
    from quickft.distributed import leave
    from quickft.report import Reporter
    from quickft.train import run as train_run

    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun, the first process shows the run for all
    try:
        train_run(
            recipe,
            overrides,
            output_dir=output_dir,
            backend=backend,
            resume=resume_dir,
            reporter=Reporter(quiet=quiet or not speaks, live=None if speaks else False),
        )
    finally:
        leave()  # several processes: close their group now, whoever has gone already


@app.command(
    cls=_Command,
    epilog=_examples(
        "quickft chat outputs/tiny_math",
        "quickft chat outputs/tiny_math --prompt '12 + 34'",
        "quickft chat outputs/tiny_math --compare-base --temperature 0.7 --seed 1",
    ),
)
def chat(
    run_dir: RunDir,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", metavar="TEXT", help="Answer this once and exit (answer only on stdout)."),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(metavar="T", help="0 = greedy. Default: the recipe's, else greedy for Q&A.")
    ] = None,
    top_p: Annotated[float | None, typer.Option(metavar="P", help="Nucleus sampling threshold, 0-1.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(metavar="N", help="Longest answer, in tokens.")] = None,
    seed: Annotated[int | None, typer.Option(metavar="N", help="Random seed, for reproducible sampling.")] = None,
    compare_base: Annotated[bool, typer.Option("--compare-base", help="Answer with and without fine-tuning.")] = False,
    system: Annotated[
        str | None,
        typer.Option("--system", metavar="TEXT", help="A system prompt for every conversation (chat-format runs)."),
    ] = None,
    hide_thinking: Annotated[
        bool, typer.Option("--hide-thinking", help="Leave a reasoning model's <think> block out (shown dim otherwise).")
    ] = False,
) -> None:
    """Talk to what a run produced: streaming, multi-turn for chat data, /reset /params /exit."""
    from quickft.chat import main as chat_main

    chat_main(
        run_dir,
        prompt=prompt,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        compare_base=compare_base,
        system=system,
        hide_thinking=hide_thinking,
    )


@app.command(
    cls=_Command,
    epilog=_examples(
        "quickft serve outputs/tiny_math    # http://127.0.0.1:8000/v1, for any OpenAI client",
        "quickft serve outputs/tiny_math/merged --port 8080    # a merged export (quickft export)",
        "QUICKFT_API_KEY=secret quickft serve outputs/tiny_math --host 0.0.0.0 --allow-remote",
        "quickft serve outputs/tiny_math --system-message refuse    # strict: a system message is a 400",
    ),
)
def serve(
    run_dir: Annotated[
        str, typer.Argument(metavar="RUN_DIR", help="A finished run, or its merged export (RUN_DIR/merged).")
    ],
    port: Port = 8000,
    host: Host = "127.0.0.1",
    allow_remote: AllowRemote = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            metavar="KEY",
            envvar="QUICKFT_API_KEY",
            show_envvar=True,
            help="Require Authorization: Bearer KEY on every /v1 request.",
        ),
    ] = None,
    max_queue: Annotated[
        int, typer.Option("--max-queue", metavar="N", min=1, help="Requests that may wait their turn (503 past it).")
    ] = 32,
    system_message: Annotated[
        str,
        typer.Option(
            "--system-message",
            metavar="drop|prepend|refuse",
            help="A system message to a run trained without a system prompt (prompt/response or text data): drop "
            "it, prepend it to the user's message, or refuse the request (400).",
        ),
    ] = "drop",
) -> None:
    """Serve a run over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models), one
    request at a time in arrival order."""
    from quickft.serve import main as serve_main

    serve_main(
        run_dir,
        host=host,
        port=port,
        api_key=api_key,
        allow_remote=allow_remote,
        max_queue=max_queue,
        system_message=system_message,
    )


@app.command(
    cls=_Command,
    epilog=_examples(
        "quickft studio    # the runs in outputs/, at http://127.0.0.1:PORT/ (printed)",
        "quickft studio outputs --port 8765",
    ),
)
def studio(
    outputs_dir: Annotated[
        str, typer.Argument(metavar="OUTPUTS_DIR", help="The directory of runs (quickft run's outputs/).")
    ] = "outputs",
    port: Port = 0,
    host: Host = "127.0.0.1",
    allow_remote: AllowRemote = False,
) -> None:
    """A local web page over the runs: live curves, end reports, compare, chat, the masking preview (offline)."""
    from quickft.studio.server import main as studio_main

    studio_main(outputs_dir, host=host, port=port, allow_remote=allow_remote)


@app.command(
    cls=_Command,
    epilog=_examples(
        "quickft bench recipes/tiny_math.py",
        "quickft bench recipes/phi2_math.py --isolate --steps 30",
        "quickft bench recipes/tiny_math.py --backends unsloth,peft,peft+nogc --repeat 5 --json",
    ),
)
def bench(
    recipe: Recipe,
    overrides: Overrides = None,
    backends: Annotated[
        str,
        typer.Option(
            metavar="VARIANT,...", help="Variants to compare: unsloth, peft, with switches +4bit +16bit +gc +nogc."
        ),
    ] = "unsloth,peft",
    steps: Annotated[
        int, typer.Option(metavar="N", help="Timed optimizer steps per variant (replaces the recipe's max_steps).")
    ] = 20,
    warmup: Annotated[int, typer.Option(metavar="N", help="Untimed warm-up steps before them.")] = 3,
    repeat: Annotated[
        int, typer.Option(metavar="N", help="Fresh processes per variant: 3 or more report a spread.")
    ] = 3,
    isolate: Annotated[
        bool, typer.Option("--isolate", help="Add PEFT with/without 4-bit and with/without GC.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON instead of the table.")] = False,
    output_dir: Annotated[
        str | None, typer.Option("--output-dir", metavar="DIR", help="Default outputs/bench-<name>.")
    ] = None,
    as_shipped: Annotated[
        bool,
        typer.Option("--as-shipped", help="Each backend with its library's own defaults, not the same settings."),
    ] = False,
) -> None:
    """Compare Unsloth with the plain PEFT baseline on the same work, each in its own process."""
    from quickft.bench import main as bench_main

    bench_main(
        recipe,
        overrides or [],
        backends=backends,
        steps=steps,
        warmup=warmup,
        repeat=repeat,
        isolate=isolate,
        as_json=as_json,
        output_dir=output_dir,
        as_shipped=as_shipped,
    )


@app.command(
    "eval",
    cls=_Command,
    epilog=_examples(
        "quickft eval outputs/tiny_math",
        "quickft eval outputs/tiny_math --cases data/sumas_test.txt",
        "quickft eval outputs/tiny_math --cases preguntas.csv data.question_column=pregunta data.answer_column=respuesta",
        "quickft eval outputs/tiny_math --json",
        "quickft eval outputs/smollm2_tutor --base    # the score before fine-tuning, on the same cases",
    ),
)
def eval_(
    run_dir: RunDir,
    settings: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="KEY=VALUE",
            help="How to read the --cases file, as in a recipe: data.question_column, data.answer_column, "
            "data.format, data.text_column, data.split, data.subset.",
            show_default=False,
        ),
    ] = None,
    cases: Annotated[
        str | None,
        typer.Option(
            "--cases",
            metavar="FILE",
            help="A file of prompts and answers to score, in any data format (default: the run's own cases).",
        ),
    ] = None,
    base: Annotated[
        bool,
        typer.Option(
            "--base", help="Score the model the run started from (adapter off): the score before fine-tuning."
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Score a finished run on test cases (the same scoring as during training)."""
    from quickft.evaluate import main as eval_main

    eval_main(run_dir, cases_path=cases, settings=settings or [], as_json=as_json, base=base)


@app.command(
    cls=_Command,
    epilog=_examples(
        "quickft data recipes/tiny_math.py",
        "quickft data recipes/phi2_math.py max_seq_length=256 --show 5",
        "quickft data recipes/tiny_math.py --json",
    ),
)
def data(
    recipe: Recipe,
    overrides: Overrides = None,
    show: Annotated[int, typer.Option("--show", metavar="N", help="Examples to preview with their loss masking.")] = 3,
    as_json: Json = False,
) -> None:
    """Report what a recipe feeds the model: counts, token lengths, padding, masking; no training."""
    from quickft.datareport import main as data_main

    data_main(recipe, overrides or [], show=show, as_json=as_json)


@app.command(
    cls=_Command,
    epilog=_examples(
        "quickft compare outputs/tiny_math outputs/tiny_math-2",
        "quickft compare outputs/phi2_math outputs/phi2_math-2 outputs/phi2_math-3 --json",
    ),
)
def compare(
    runs: Annotated[
        list[str], typer.Argument(metavar="RUN_DIR", help="Two or more run directories; ratios are to the first.")
    ],
    as_json: Json = False,
) -> None:
    """Compare finished runs side by side: speed, FLOPs, loss and memory."""
    from quickft.compare import main as compare_main

    compare_main(runs, as_json=as_json)


@app.command(
    cls=_Command,
    epilog=_examples(
        "quickft export outputs/tiny_math    # a merged Hugging Face model in outputs/tiny_math/merged",
        "quickft export outputs/tiny_math --to gguf --quant q8_0    # for llama.cpp and LM Studio",
        "quickft export outputs/tiny_math --to ollama    # GGUF + Modelfile; then ollama create",
        "quickft export outputs/smollm2_tutor --to gguf-lora    # the adapter alone, for your base GGUF",
    ),
)
def export(
    run_dir: RunDir,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="merged|gguf|gguf-lora|ollama",
            help="What to write (ollama, for a LoRA run trained from a GGUF: FROM that GGUF + ADAPTER).",
            show_default=True,
        ),
    ] = "merged",
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant",
            metavar="f32|f16|q8_0|q4_k_m",
            help="GGUF weights (default f16 for gguf and adapters, q8_0 for ollama; q4_k_m needs llama.cpp's "
            "quantizer and is not for adapters).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", metavar="DIR", help="Where to write (default RUN_DIR/<form>).")
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", metavar="auto|float16|bfloat16|float32", help="Merged weights (auto: the base's own dtype)."
        ),
    ] = "auto",
    no_check: Annotated[
        bool, typer.Option("--no-check", help="Do not load the export back to compare its answers.")
    ] = False,
    as_json: Json = False,
) -> int:
    """Take the model out: merged Hugging Face weights, GGUF, a GGUF LoRA adapter, or an Ollama Modelfile, checked by
    loading back."""
    from quickft.export import main as export_main

    return export_main(run_dir, to=to, quant=quant, out=out, dtype=dtype, check=not no_check, as_json=as_json)


@app.command(cls=_Command, epilog=_examples("quickft doctor", "quickft doctor --fast", "quickft doctor --json"))
def doctor(
    as_json: Json = False,
    fast: Annotated[bool, typer.Option("--fast", help="Skip the (slow) unsloth import check.")] = False,
) -> None:
    """Show the software and hardware stack, layer by layer, and which backend `auto` picks here."""
    from quickft.doctor import main as doctor_main

    doctor_main(as_json=as_json, check_unsloth_import=not fast)


_argv: list[str] | None = None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting (tests call this)."""
    global _debug, _argv
    from quickft.cpu import set_openmp

    set_openmp()  # before any verb imports torch: OpenMP reads these once, as its runtime starts
    _debug = bool(os.environ.get("QUICKFT_DEBUG")) or "--debug" in (argv if argv is not None else sys.argv[1:])
    _argv = argv
    from quickft import noise

    noise.show_hidden(_debug)  # known-harmless library messages: hidden, or shown marked under --debug
    noise.hide_known_harmless()
    # under torchrun every process runs this; the first one of each machine speaks for all of its processes (they
    # read the same inputs, and agree on their errors: quickft.distributed.checked)
    speaks = os.environ.get("LOCAL_RANK", "0") == "0"
    try:
        result = app(args=argv, prog_name="quickft", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except UserError as e:
        if _debug:
            import traceback

            traceback.print_exc()
        if speaks:
            print(f"error: {e.message}", file=sys.stderr)
            if e.hint:
                print(f"  fix: {e.hint}", file=sys.stderr)
        return 2
    except ProcessLost as e:
        if speaks:
            print(f"error: {e.message}", file=sys.stderr)
            print(f"  {e.next_step}", file=sys.stderr)
        return 3
    except RunInterrupted as e:
        if speaks:
            print(f"interrupted: checkpoint, metrics and partial report saved in {e.run_dir}", file=sys.stderr)
            print(f"  resume with: {e.resume_command}", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage: a missing argument, an unknown verb or option, a bad option value
        e.show()  # the verb's usage line, "Try 'quickft VERB --help' for help." and the error
        return 2
    except (KeyboardInterrupt, typer.Abort):
        if speaks:
            print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from quickft.distributed import lost_peer

        if _debug:
            raise
        if lost_peer(e):  # before the run began or after it ended
            print(f"error: lost another process of this run: {str(e).strip().splitlines()[0][:300]}", file=sys.stderr)
            return 3
        print(f"quickft crashed: {type(e).__name__}: {e}", file=sys.stderr)
        print("  rerun with --debug for the full traceback, and include it in a bug report", file=sys.stderr)
        return 1


def entry() -> None:
    code = main()
    if code == 3:  # another process is gone: leave before the process group's threads abort this one at exit
        from quickft.distributed import exit_now

        exit_now(code)
    sys.exit(code)
