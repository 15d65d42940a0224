"""What a run says about itself: the header (and backend.json) before the first step, summary.json and the metric
files after the last, and the commands to run next. The console draws it (quickft.report); the figures come from
quickft.recorder's measurements and quickft.metrics' arithmetic."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from quickft import distributed, methods, rundir
from quickft import metrics as m
from quickft.backends import model_facts
from quickft.hardware import Choice
from quickft.plots import write_plots


def trained_precision(choice: Choice, args) -> tuple[Choice, list[str]]:
    """The choice with the precision the trainer really runs, read back from its arguments once it is built, and the
    header's note when that is not the one chosen: Unsloth's trainer sets it by itself (bf16 autocast for an fp32
    recipe on a card with bf16; its own choice for models it runs in fp32, Gemma 3 and gpt-oss)."""
    actual = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    if actual == choice.precision:
        return choice, []
    who = "Unsloth's trainer" if choice.backend == "unsloth" else "the trainer"
    note = (
        f"{who} trains in {actual}, not the {choice.precision} quickft chose: the report and backend.json say {actual}"
    )
    return replace(choice, precision=actual, reason=f"{choice.reason}; {note}"), [note]


def show_header(run, trainer, model, model_path: str, data, notes=(), placement=(), *, base=None) -> dict:
    """The header, and backend.json: the model as the trainer holds it (TRL and Unsloth may have changed it), and
    for a GGUF base, the GGUF it was de-quantized from (chat and export find it there)."""
    recipe, choice, split, run_dir, reporter = run.recipe, run.choice, run.split, run.run_dir, run.reporter
    facts = model_facts(trainer.model)
    if distributed.is_main():
        record = choice.to_dict() | {"model_path": model_path, "model": facts}
        if base is not None:
            record["gguf"] = {k: v for k, v in base.items() if k != "note"}
        rundir.write_json(run_dir / "backend.json", record)
    if base is not None:
        notes = [f"base model: {base['origin']}, {base['note']}", *notes]
    return reporter.header(
        recipe=recipe,
        choice=choice,
        model=model,
        facts=facts,
        model_path=model_path,
        n_examples=len(data.train),
        # fewer than examples when packed; a GRPO prompt is num_generations answers
        n_sequences=len(trainer.train_dataset) * methods.room(recipe.method).sequences_per_row(recipe),
        n_tokens=data.prepared.tokens,
        run_dir=run_dir,
        max_steps=trainer.args.max_steps if trainer.args.max_steps > 0 else None,
        dropped=split.dropped + data.prepared.dropped,
        truncated=data.prepared.truncated,
        documents=data.prepared.documents,
        notes=split.notes + data.prepared.notes + gpu_notes(choice) + list(notes),
        n_eval=len(split.eval),
        n_cases=len(data.cases),
        placement=placement,
    )


def other_machine(storage: dict, run_dir: Path) -> None:
    """On each machine but rank 0's, one line in place of the run's console (rank 0's), saying where that is."""
    if distributed.is_main() or not distributed.speaks():
        return
    import socket
    import sys

    here = f"node {distributed.node_rank()} ({socket.gethostname()})"
    processes = os.environ.get("LOCAL_WORLD_SIZE", "1")
    print(
        f"{here}: {processes} process(es) training their share of the run; rank 0, on {storage['host']}, shows it "
        f"and writes {run_dir}"
        + (
            ", which this machine does not see: it keeps its own copy of each checkpoint there, for --resume"
            if here in storage["unseen"]
            else ""
        ),
        file=sys.stderr,
        flush=True,
    )


def placement_rows(recipe, unseen: list[str]) -> list[tuple[str, str]]:
    """The header's rows on several processes: FSDP's sharding; on several machines, how many, where they met, and
    who sees the run directory."""
    rows = []
    if recipe.distributed == "fsdp":
        rows.append(
            (
                "sharding",
                f"FSDP2 (accelerate): weights, gradients and optimizer state split across {distributed.world_size()} "
                "processes, one unit per decoder layer; saved whole"
                if distributed.world_size() > 1
                else "distributed='fsdp' with one process: nothing to shard, trained as usual",
            )
        )
    if distributed.nodes() == 1:
        return rows
    import socket

    how, here = distributed.launched(), socket.gethostname()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    met = f", c10d rendezvous at {how['endpoint']}" if how.get("endpoint") else ""
    met += " (from SLURM's variables)" if how.get("via") == "SLURM" else ""
    where = (
        "shared: every machine sees the run directory (only rank 0 writes it)"
        if not unseen
        else f"on rank 0's machine ({here}) only: {', '.join(unseen)} do not see it, and keep their own copy of each "
        "checkpoint at the same path (for --resume)"
    )
    return rows + [
        (
            "nodes",
            f"{distributed.nodes()} machines × {per_node} process{'es' if per_node > 1 else ''}{met}; rank 0 on {here}",
        ),
        ("storage", where),
    ]


def gpu_notes(choice: Choice) -> list[str]:
    """The header's line for a machine with GPUs this run leaves idle."""
    if choice.device != "cuda" or distributed.world_size() > 1:
        return []
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return []
    return [f"{count} GPUs here: this run trains on GPU 0; `quickft run RECIPE --gpus {count}` trains on all of them"]


def summarize_run(run, recorder, trainer, header: dict, samples: list[dict], evaluation: dict | None) -> dict:
    """summary.json: the recorder's measurements and the trainer's state, through quickft.metrics' arithmetic."""
    reporter, choice, run_dir, match = run.reporter, run.choice, run.run_dir, run.recipe.eval.match
    state = trainer.state
    after = {k: v for k, v in reporter.phases.items() if k not in reporter.setup_phases}
    summary = m.summarize(
        rows=recorder.rows,
        runtime_s=recorder.ended - recorder.started,
        steps_time_s=recorder.step_s,
        session_steps=state.global_step - recorder.start_step,
        mem=recorder.memory
        | {k: v for k, v in recorder.peaks.report().items() if k.startswith(("answering", "evaluation"))},
        setup_s=reporter.setup_s,
        setup_phases=reporter.setup_phases,
        session=recorder.totals,
        earlier=recorder.earlier,
        steps=state.global_step,
        epochs=state.epoch,
        total_flos=state.total_flos,
    )
    train = summary["train"]
    train["after_phases"] = after  # every second after training, by phase (saving, answering, plots)
    train["process_start_s"] = reporter.process_start_s  # and before the verb: Python's start, quickft's imports
    processes = len(recorder.per_process)
    train |= m.flops_figures(
        header["flop_counts"],
        header["mode"],
        trainer.passes(),
        tokens=train["tokens"],
        samples=train["samples"],
        generated=recorder.earlier["generated"] + recorder.totals["generated_tokens"],
        tokens_per_s=train["tokens_per_s"],
        gpu_name=choice.hardware.gpu_name,
        precision=choice.precision,
        processes=processes,
        cuda=choice.device == "cuda",
        cpu_peak=((choice.cpu or {}).get("peak") or {}).get("flops_per_s"),
    )
    train["processes"] = processes
    if len(recorder.per_process) > 1:  # what each process counted and peaked at; the report shows sum and max
        summary["processes"] = {"backend": distributed.backend_name(), "per_process": recorder.per_process}
    summary["run_dir"] = str(run_dir)
    summary["backend"] = choice.to_dict()
    summary["model"] = header
    method = header["method"]  # the method's own figures: "preference", "grpo"
    summary |= methods.room(method).summary(recorder.rows, recorder.totals, recorder.step_s, method)
    if samples:
        correct = sum(s["correct"] for s in samples)
        summary["test_cases"] = {"n": len(samples), "score": correct / len(samples), "correct": correct, "match": match}
        start = next((r for r in recorder.eval_rows if r["step"] == 0 and "case_score" in r), None)
        if start is not None:  # the starting model's score (score_the_start)
            summary["test_cases"]["before_training"] = start["case_score"]
    summary["evaluation"] = evaluation
    if recorder.eval_rows:
        summary["evaluation"] = (evaluation or {}) | {"history": recorder.eval_rows}
    return summary


def write_metric_files(callback, run_dir: Path, recipe) -> None:
    """metrics.csv and the plots, from every row of the run (a resumed run's earlier rows included)."""
    rows = sorted(callback.rows + callback.eval_rows, key=lambda r: r["step"])
    write_plots(rows, run_dir, name=run_dir.name, target=recipe.eval.target, more=methods.plots)
    rundir.write_csv(run_dir / "metrics.csv", rows)


def next_commands(run_dir: Path, split) -> list[str]:
    """What a user runs next with this run directory."""
    commands = [f"quickft chat {run_dir}    # talk to it"]
    if split.case_examples:
        commands.append(f"quickft eval {run_dir}    # score the test cases again (--cases FILE for others)")
    commands.append(f"quickft compare {run_dir} OTHER_RUN    # side by side with another run")
    commands.append(f"quickft export {run_dir} --to ollama    # use it elsewhere: --to merged (transformers), gguf")
    return commands
