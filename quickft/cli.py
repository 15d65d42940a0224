"""The `quickft` command: parses arguments, calls one function per verb, maps errors to exit codes.

Heavy libraries (torch, transformers, trl, unsloth) are imported inside the verbs, so `quickft --help` is instant.
Exit codes: 0 ok, 1 crash (a bug: traceback with --debug), 2 bad input (one clear message), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from quickft.errors import RunInterrupted, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Quick LoRA / QLoRA / full fine-tuning of causal language models, on the GPU you have (or none).",
)
_debug = False


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    global _debug
    _debug = debug or _debug


Backend = Annotated[
    str | None,
    typer.Option("--backend", help="auto (default: from the hardware), unsloth or peft.", show_default=False),
]


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe file, e.g. recipes/tiny_math.py")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides: max_steps=20 lora.r=8")] = None,
    output_dir: Annotated[
        str | None, typer.Option("--output-dir", help="Run directory (default outputs/<name>).")
    ] = None,
    backend: Backend = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print only the final report.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run: --resume [RUN_DIR] (default: the newest).")
    ] = False,
) -> None:
    """Fine-tune a model as a recipe says, and write a run directory."""
    if backend not in (None, "auto", "unsloth", "peft"):
        raise UserError(f"--backend {backend}: unknown backend", hint="use auto, unsloth or peft")
    overrides = overrides or []
    resume_dir = None
    if resume:  # `--resume RUN_DIR`: the run directory arrives among the key=value arguments
        dirs = [o for o in overrides if "=" not in o]
        overrides = [o for o in overrides if "=" in o]
        resume_dir = dirs[0] if dirs else "latest"
    from quickft.report import Reporter
    from quickft.train import run as train_run

    train_run(
        recipe, overrides, output_dir=output_dir, backend=backend, resume=resume_dir, reporter=Reporter(quiet=quiet)
    )


@app.command()
def chat(
    run_dir: Annotated[str, typer.Argument(help="A finished run, e.g. outputs/tiny_math")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Answer this once and exit (answer only on stdout).")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="0 = greedy. Default: the recipe's, else greedy for Q&A.")
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling threshold.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed, for reproducible sampling.")] = None,
    compare_base: Annotated[bool, typer.Option("--compare-base", help="Answer with and without fine-tuning.")] = False,
    system: Annotated[
        str | None, typer.Option("--system", help="A system prompt for every conversation (chat-format runs).")
    ] = None,
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
    )


@app.command()
def bench(
    recipe: Annotated[str, typer.Argument(help="Recipe file, e.g. recipes/tiny_math.py")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, as for `run`")] = None,
    backends: Annotated[
        str, typer.Option(help="Variants to compare: unsloth, peft, with switches +4bit +16bit +gc +nogc.")
    ] = "unsloth,peft",
    steps: Annotated[int, typer.Option(help="Timed optimizer steps per variant.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps before them.")] = 3,
    repeat: Annotated[int, typer.Option(help="Fresh processes per variant.")] = 1,
    isolate: Annotated[
        bool, typer.Option("--isolate", help="Add PEFT with/without 4-bit and with/without GC.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the JSON.")] = False,
    output_dir: Annotated[str | None, typer.Option("--output-dir", help="Default outputs/bench-<name>.")] = None,
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


@app.command("eval")
def eval_(
    run_dir: Annotated[str, typer.Argument(help="A finished run")],
    cases: Annotated[
        str | None, typer.Option("--cases", help="A prompt/response file to score (default: the run's cases).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Score a finished run on test cases (the same scoring as during training)."""
    from quickft.evaluate import main as eval_main

    eval_main(run_dir, cases_path=cases, as_json=as_json)


@app.command()
def data(
    recipe: Annotated[str, typer.Argument(help="Recipe file")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, as for `run`")] = None,
    show: Annotated[int, typer.Option("--show", help="Examples to preview with their loss masking.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Report what a recipe feeds the model: counts, token lengths, padding, masking; no training."""
    from quickft.datareport import main as data_main

    data_main(recipe, overrides or [], show=show, as_json=as_json)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Two or more run directories; ratios are to the first.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Compare finished runs side by side: speed, FLOPs, loss and memory."""
    from quickft.compare import main as compare_main

    compare_main(runs, as_json=as_json)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    fast: Annotated[bool, typer.Option("--fast", help="Skip the (slow) unsloth import check.")] = False,
) -> None:
    """Show the software and hardware stack, layer by layer, and which backend `auto` picks here."""
    from quickft.doctor import main as doctor_main

    doctor_main(as_json=as_json, check_unsloth_import=not fast)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting (tests call this)."""
    global _debug
    _debug = bool(os.environ.get("QUICKFT_DEBUG")) or "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        result = app(args=argv, prog_name="quickft", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except UserError as e:
        if _debug:
            import traceback

            traceback.print_exc()
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  fix: {e.hint}", file=sys.stderr)
        return 2
    except RunInterrupted as e:
        print(f"interrupted: checkpoint, metrics and partial report saved in {e.run_dir}", file=sys.stderr)
        print(f"  resume with: {e.resume_command}", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage: a missing argument, an unknown verb or option, a bad option value
        e.show()  # the verb's usage line, "Try 'quickft VERB --help' for help." and the error
        return 2
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _debug:
            raise
        print(f"quickft crashed: {type(e).__name__}: {e}", file=sys.stderr)
        print("  rerun with --debug for the full traceback, and include it in a bug report", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())
