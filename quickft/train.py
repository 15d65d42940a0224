"""`quickft run`: recipe -> data -> model -> the method's TRL trainer -> a complete run directory.

Order matters: everything that can fail on bad input (recipe, data, model path, output dir) is checked before the
slow imports; unsloth, when chosen, is imported before transformers/trl/peft. The stages `quickft bench` and
`quickft data` share are quickft.pipeline's; what the run says about itself (header, summary) is quickft.summary's.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from quickft import cpu, cpu_speed, distributed, methods, rundir
from quickft.backends import (
    SDPA,
    choose_backend,
    load,
    measure_cpu_peak,
    private_by_default,
    quiet_libraries,
    settle_cpu_precision,
)
from quickft.cpu_speed import probe_batch
from quickft.data.encode import Prepared, make_cases
from quickft.data.split import Split
from quickft.errors import ProcessLost, RunInterrupted, UserError, is_out_of_memory
from quickft.hardware import Choice, cpu_precision_plan
from quickft.metrics import TokenCounter
from quickft.models import GGUF, dense_checkpoint, dense_dtype, gguf_record, is_cached
from quickft.noise import tied_weights_not_missing
from quickft.pipeline import (
    check_tracker,
    make_trainer,
    materialize,
    model_reference,
    read_data,
    to_dataset,
    tracker_callbacks_last,
    training_rows,
    training_tokenizer,
)
from quickft.recipe import Recipe, Scratch, load_recipe, recipe_from_dict, recipe_to_dict
from quickft.recovery import StopOnSignal, recover_from_oom
from quickft.report import Reporter, report_text
from quickft.summary import (
    next_commands,
    other_machine,
    placement_rows,
    show_header,
    summarize_run,
    trained_precision,
    write_metric_files,
)


def run(
    recipe_path: str,
    overrides: list[str],
    *,
    output_dir: str | None = None,
    backend: str | None = None,
    resume: str | None = None,
    reporter: Reporter,
) -> Path:
    """Train as the recipe says (or continue an interrupted run with `resume`); return the run directory."""
    if resume is not None:
        return _resume(recipe_path, overrides, resume, reporter)
    _connect(reporter)
    with reporter.phase("reading the recipe and data"):
        run = distributed.checked(lambda: _read_inputs(recipe_path, overrides, backend, output_dir, reporter))
    run.choice = _choose_backend(run.recipe, run.local, reporter)
    run.run_dir = Path(distributed.broadcast(str(run.run_dir)))  # under torchrun: rank 0's pick, for every process
    return _guarded(run)


@dataclass
class Run:
    """What a run is made of, as its stages pass it on: the recipe (its data format resolved), the file it came
    from, its data split, its base model, where it writes and reports, and once chosen, the backend; for a resumed
    run, the checkpoint it goes on from."""

    recipe: Recipe
    recipe_path: str
    split: Split
    model_ref: str | Scratch | GGUF
    local: bool
    run_dir: Path
    reporter: Reporter
    choice: Choice | None = None
    checkpoint: Path | None = None


def _read_inputs(recipe_path: str, overrides: list[str], backend: str | None, output_dir: str | None, reporter) -> Run:
    """Everything that can fail on bad input, before anything loads: the recipe, its data and model, the tracker,
    the run directory."""
    recipe = load_recipe(recipe_path, overrides)
    if backend:
        recipe = replace(recipe, backend=backend)
    recipe, split = read_data(recipe)
    model_ref, local = model_reference(recipe)
    check_tracker(recipe.track)
    run_dir = rundir.pick_run_dir(recipe.name, output_dir or recipe.output_dir)
    rundir.check_writable(run_dir)
    return Run(recipe, recipe_path, split, model_ref, local, run_dir, reporter)


def _connect(reporter: Reporter) -> None:
    """Several processes (torchrun): connect them before reading anything, so that an input error on one machine
    stops all of them with its message."""
    if distributed.world_size() > 1:
        with reporter.phase("importing torch and connecting the processes"):
            distributed.join()


def _resume(recipe_path: str, overrides: list[str], resume: str, reporter: Reporter) -> Path:
    if overrides:
        raise UserError("--resume continues a run with its saved recipe; overrides cannot change it", hint="drop them")
    _connect(reporter)
    # rank 0 reads the run directory: the other machines may not share its storage
    found = distributed.from_rank0(lambda: _resumable(recipe_path, resume))
    run_dir = Path(found["run_dir"])
    if found["checkpoint"] is None:
        reporter.info(f"{run_dir} is already completed: nothing to resume")
        return run_dir
    checkpoint = run_dir / "checkpoints" / found["checkpoint"]
    distributed.checked(lambda: _check_checkpoint_here(checkpoint))  # each machine resumes from its own copy
    reporter.info(f"resuming {run_dir} from {checkpoint.name}")
    with reporter.phase("reading the recipe and data"):
        recipe, split, model_ref, local = distributed.checked(lambda: _read_saved_inputs(found["recipe"]))
    run = Run(recipe, recipe_path, split, model_ref, local, run_dir, reporter, checkpoint=checkpoint)
    run.choice = _choose_backend(recipe, local, reporter)
    return _guarded(run)


def _resumable(recipe_path: str, resume: str) -> dict:
    """The run to resume (rank 0's view): its directory, saved recipe and last checkpoint (None: completed)."""
    run_dir = Path(resume) if resume != "latest" else rundir.resumable_run(load_recipe(recipe_path).name)
    run = rundir.open_run(run_dir, need_finished=False)
    if run["status"].get("status") == "completed":
        return {"run_dir": str(run_dir), "checkpoint": None}
    checkpoint = rundir.latest_checkpoint(run_dir)
    if checkpoint is None:
        raise UserError(
            f"{run_dir}: no checkpoint to resume from (checkpoints/ is empty)",
            hint="start the run again; set save_every=N in the recipe to write checkpoints as it trains",
        )
    rundir.truncate_metrics(run_dir / "metrics.jsonl", int(checkpoint.name.split("-")[-1]))
    return {"run_dir": str(run_dir), "recipe": run["recipe"], "checkpoint": checkpoint.name}


def _read_saved_inputs(saved: dict):
    recipe, split = read_data(recipe_from_dict(saved))
    model_ref, local = model_reference(recipe)
    check_tracker(recipe.track)
    return recipe, split, model_ref, local


def _check_checkpoint_here(checkpoint: Path) -> None:
    if not checkpoint.is_dir():
        raise UserError(
            f"{checkpoint} is not on this machine: the run directory is on rank 0's machine only",
            hint="copy that checkpoint to the same path here, or keep runs on storage every machine shares (a run "
            "that starts on separate storage saves each checkpoint on every machine itself)",
        )


def _choose_backend(recipe: Recipe, local: bool, reporter: Reporter) -> Choice:
    private_by_default(local)
    # torch's import and the GPU check, and Unsloth's import (which patches transformers, trl and peft) when chosen
    with reporter.phase("importing torch and choosing the backend"):
        choice = choose_backend(recipe)
        distributed.start(choice.device)  # under torchrun / accelerate launch: join the other processes
        return choice


def _guarded(run: Run) -> Path:
    """Train, keeping status.json true whatever happens (running, completed, interrupted, failed); with several
    processes, the first one keeps it."""
    main, run_dir = distributed.is_main(), run.run_dir
    try:
        _train(run)
    except (KeyboardInterrupt, RunInterrupted):
        if main and (run_dir / "status.json").is_file():
            rundir.set_status(run_dir, "interrupted")
        raise
    except BaseException as e:
        lost = _lost(e, run.recipe_path, run_dir, run.choice) if distributed.lost_peer(e) else None
        if main and (run_dir / "status.json").is_file():
            rundir.set_status(run_dir, "failed", error=lost.message if lost else f"{type(e).__name__}: {e}")
        if lost:
            raise lost from e
        raise
    if main:
        rundir.set_status(run_dir, "completed", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return run_dir


def _lost(error: BaseException, recipe_path: str, run_dir: Path, choice: Choice) -> ProcessLost:
    """The message for a collective that failed because another process is gone, and how to go on from here."""
    checkpoint = rundir.latest_checkpoint(run_dir)
    where = f" on {distributed.nodes()} machines" if distributed.nodes() > 1 else ""
    said = str(error).strip().splitlines()[0].split(". This is typically")[0]  # gloo's line, without its advice
    message = (
        f"lost another process of this run{where}: {said[:300]}\n"
        "  its machine stopped, was killed or lost the network (its own output says why); this process stops too"
    )
    if checkpoint is None:
        return ProcessLost(message, "no checkpoint was saved: start the run again (save_every=N saves checkpoints)")
    command = distributed.same_launcher(f"quickft run {recipe_path} --resume {run_dir}", choice.device)
    return ProcessLost(message, f"resume from {checkpoint.name} with: {command}")


def _train(run: Run) -> None:
    """The run, step by step: load the model, prepare the data, open the run directory, build the trainer, train
    (recovering from out-of-memory), save, answer the test cases, report. Under torchrun every process trains its
    share; only the first one writes."""
    recipe, run_dir, reporter, checkpoint = run.recipe, run.run_dir, run.reporter, run.checkpoint
    model_path, loaded, base = load_model(run)
    run.choice, tokenizer = loaded.choice, loaded.tokenizer  # PEFT, if Unsloth refused the model
    data = prepare_data(recipe, run.split, tokenizer, reporter)
    open_run_dir(run)
    storage = distributed.check_storage(run_dir / "status.json")  # do the other machines see the run directory?
    if storage["unseen"] and recipe.distributed == "fsdp":  # every process learns the same: all of them stop
        raise UserError(
            f"distributed='fsdp' needs the run directory on storage every machine sees: {', '.join(storage['unseen'])} "
            f"do not see {run_dir}, and FSDP's checkpoints (the gathered optimizer state) are written by rank 0 only",
            hint="give --output-dir a path on shared storage (NFS, Lustre ...), or use distributed='ddp'",
        )
    other_machine(storage, run_dir)
    counter = TokenCounter()  # every trainer of this run (a new one after an out-of-memory retry) counts into it

    def build(recipe: Recipe):  # again after an out-of-memory retry, with a smaller micro-batch
        args = (recipe, run.choice, loaded.model, tokenizer, data.train, run_dir, data.eval)
        return make_trainer(*args, counter=counter)

    with reporter.phase("building the trainer"):
        trainer = build(recipe)
    in_fp32 = None  # on a CPU that trains a LoRA run in bf16: puts it back in fp32 to answer, as chat will
    if run.choice.device == "cpu":
        run.choice, in_fp32 = cpu_precision(run, trainer, data)
        if run.choice.precision == "bf16" and not trainer.args.bf16:  # the probe picked bf16: autocast from now on
            with reporter.phase(f"building the trainer again, for {run.choice.precision}"):
                if "ref" in getattr(loaded.model, "peft_config", {}):  # TRL copies the adapter again (untrained yet)
                    loaded.model.delete_adapter("ref")
                trainer = build(recipe)  # with the bf16 choice: make_trainer reads the precision from it
    run.choice, precision_notes = trained_precision(run.choice, trainer.args)
    if run.choice.device == "cpu":
        with reporter.phase(f"measuring this CPU's {run.choice.precision} matrix-multiply peak (for MFU)"):
            run.choice = measure_cpu_peak(run.choice)
        precision_notes = cpu.header_notes(run.choice) + cpu_speed.step_notes(recipe, data.prepared) + precision_notes
    precision_notes += attention_notes(recipe, loaded.model)
    notes = precision_notes + methods.room(recipe.method).notes(recipe, trainer)
    placement = placement_rows(recipe, storage["unseen"])
    header = show_header(run, trainer, loaded.model, model_path, data, notes, placement, base=base)
    recorder = make_recorder(run, counter)
    if checkpoint is None:  # a resumed run has its starting score in its earlier rows
        score_the_start(recipe, trainer, data.cases, recorder, reporter)
    trainer, evaluator, stopper = train_with_recovery(run, trainer, build, data.cases, recorder)
    main = distributed.is_main()
    if stopper.requested:  # save what there is, then tell the user how to go on
        resume = distributed.same_launcher(f"quickft run {run.recipe_path} --resume {run_dir}", run.choice.device)
        if main:
            write_metric_files(recorder, run_dir, recipe)
            end_report(run, recorder, trainer, header, data, [], None, interrupted=True)
        raise RunInterrupted(run_dir, resume)
    with reporter.phase("saving the model"):
        if "ref" in getattr(loaded.model, "peft_config", {}):
            loaded.model.delete_adapter("ref")  # DPO's or GRPO's frozen starting adapter: the run is the trained one
        trainer.save_model(str(run_dir))  # adapter only for LoRA, the whole model; by the first process only
        if main:
            tokenizer.save_pretrained(run_dir)
    evaluation = evaluator.summary() if evaluator else final_evaluation(trainer, recorder, reporter)
    sharded = distributed.sharded(trainer.model)
    if not main and not sharded:  # the others' share is done
        return
    if in_fp32:  # a CPU's bf16 pick trained the adapter; it answers in fp32, as chat, eval and export load it
        in_fp32()
    with recorder.peaks.phase("answering"):  # under FSDP every process takes part (the weights are spread)
        samples = _answer_cases(loaded.model, tokenizer, recipe, data.cases, reporter)
    if not main:
        return
    rundir.write_jsonl(run_dir / "samples.jsonl", samples)
    with reporter.phase("writing plots and metrics.csv"):
        write_metric_files(recorder, run_dir, recipe)
    end_report(run, recorder, trainer, header, data, samples, evaluation)
    reporter.closing(run_dir, next_commands(run_dir, run.split))


def end_report(run: Run, recorder, trainer, header: dict, data: Data, samples: list[dict], evaluation, **more) -> None:
    """The end report on the console and, as printed, in report.txt; summary.json with the data's counts (and `more`:
    an interrupted run says so). The first process only."""
    summary = summarize_run(run, recorder, trainer, header, samples, evaluation)
    run.reporter.report(summary, samples)
    (run.run_dir / "report.txt").write_text(report_text(summary, samples), encoding="utf-8")
    rundir.write_json(run.run_dir / "summary.json", summary | {"data": data.counts} | more)


def cpu_precision(run: Run, trainer, data: Data):
    """(choice, the function that puts a bf16-trained LoRA model back in fp32, or None) once the CPU's precision is
    settled (backends.settle_cpu_precision): with precision=auto and bf16 instructions, a probe times this run's
    own passes in each (the caller builds the trainer again for a bf16 pick, to train under autocast). The pick is
    how the run trains, not how it answers: recipe.json keeps precision=auto, so chat, eval and export load it in
    fp32 as before, and the run answers its test cases in fp32 too. A resumed run goes on in the precision its
    backend.json says it trained in."""
    recipe, choice, run_dir, reporter = run.recipe, run.choice, run.run_dir, run.reporter
    previous = None
    if run.checkpoint is not None and (run_dir / "backend.json").is_file():
        previous = json.loads((run_dir / "backend.json").read_text(encoding="utf-8")).get("precision")
    found = choice.hardware.cpu if choice.hardware else None
    weights = sum(p.numel() for p in trainer.model.parameters())
    options = {
        "mode": recipe.mode,
        "backend": choice.backend,
        "processes": distributed.world_size(),
        "weights": weights,
    }
    probe, _ = cpu_precision_plan(found, requested=recipe.precision, **options)
    has = found.bf16_instructions if found and found.bf16_instructions else "unknown instructions"
    what = f"timing this model's passes in fp32 and in bf16 (precision=auto, a CPU with {has})"
    with reporter.phase(what if probe and not previous else "reading the CPU"):
        sequences = methods.room(recipe.method).probe_sequences(recipe)
        batch = probe_batch(recipe, trainer, data.prepared, sequences) if probe and not previous else None
        return settle_cpu_precision(recipe, choice, trainer.model, batch, previous=previous)


def attention_notes(recipe: Recipe, model) -> list[str]:
    """The header's line when packed examples are attended to one by one (backends.quickft_sdpa)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if recipe.data.batching != "packed" or getattr(base.config, "_attn_implementation", None) != SDPA:
        return []
    return [
        "packed rows: each example attends to itself alone, computed example by example (SDPA per example, "
        "instead of the whole row under a block-diagonal mask)"
    ]


def load_model(run: Run):
    """(model path, Loaded, the GGUF it came from or None): a Scratch model is built first, a GGUF de-quantized
    first (once, by the first process, then cached)."""
    recipe, choice, model_ref, reporter = run.recipe, run.choice, run.model_ref, run.reporter
    quiet_libraries()
    model_path, base = model_ref, None
    if isinstance(model_ref, Scratch):
        with (
            reporter.phase("building the model from its config (cached after the first run)"),
            distributed.main_first(),
        ):
            model_path = materialize(recipe, model_ref, run.split.train)
    elif isinstance(model_ref, GGUF):
        dtype = dense_dtype(recipe.mode, choice.precision)
        what = (
            f"the {model_ref.quant} GGUF de-quantized to {dtype}, from the cache"
            if is_cached(model_ref, dtype)
            else f"de-quantizing the {model_ref.quant} GGUF to {dtype} (once: cached for the next runs)"
        )
        with reporter.phase(what), distributed.main_first():
            dense = dense_checkpoint(model_ref, dtype)
        model_path, base = str(dense.path), gguf_record(model_ref, dense) | {"note": dense.note()}
    with reporter.phase("loading the model" + (" with Unsloth" if choice.backend == "unsloth" else "")):
        return model_path, load(recipe, choice, model_path, local=run.local), base


@dataclass
class Data:
    """The tokenized training and eval datasets, the test cases framed as the model sees them, and the counts
    `quickft data` and summary.json report."""

    train: object
    eval: object | None
    prepared: Prepared
    counts: dict
    cases: list[tuple[str, str]]
    """Test cases as (prompt text exactly as the model sees it, expected answer)."""


def prepare_data(recipe: Recipe, split: Split, tokenizer, reporter: Reporter) -> Data:
    """Examples into token ids, as the trainer will see them; the test cases framed as the model will see them."""
    with reporter.phase("tokenizing the data"):
        training_tokenizer(tokenizer, recipe, split.train)
        cases = make_cases(split.case_examples, recipe.data, recipe.eval.cases, tokenizer)
        prepared = training_rows(recipe, split.train, tokenizer)
        train = to_dataset(prepared.rows)
        eval_dataset = to_dataset(training_rows(recipe, split.eval, tokenizer).rows) if split.eval else None
    return Data(train, eval_dataset, prepared, split.counts(prepared), cases)


def open_run_dir(run: Run) -> None:
    """Every input check has passed: only now does the run directory appear (written by the first process only)."""
    run_dir, recipe, recipe_path, checkpoint = run.run_dir, run.recipe, run.recipe_path, run.checkpoint
    if not distributed.is_main():
        return
    if checkpoint is None:
        rundir.create_run_dir(run_dir)
        rundir.write_json(run_dir / "recipe.json", recipe_to_dict(recipe))
        rundir.set_status(run_dir, "running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), recipe_file=str(recipe_path))
    else:
        rundir.set_status(run_dir, "running", resumed_from=checkpoint.name)


def make_recorder(run: Run, counter):
    """The callback that records metrics.jsonl; a resumed run's report covers the whole run, so its earlier rows
    (the first process reads them) carry on."""
    from quickft.recorder import Recorder

    metrics = run.run_dir / "metrics.jsonl"
    earlier = []
    if distributed.is_main() and run.checkpoint is not None and metrics.is_file():
        earlier = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
    return Recorder(metrics, run.choice.device, counter, run.reporter, earlier_rows=earlier)


def score_the_start(recipe: Recipe, trainer, cases: list[tuple[str, str]], recorder, reporter: Reporter) -> None:
    """DPO, ORPO, SimPO, KTO and GRPO start from a model that was trained already: its test-case score is what the
    run's end score is read against (it may fall). It costs one pass over the test cases before the first step (a
    setup phase of its own, timed in the report); its row is step 0 of metrics.jsonl. SFT runs skip it: they start
    from a base model or random weights, and `quickft eval RUN --base` scores the base afterwards when wanted."""
    from quickft.callbacks import case_score

    if not methods.room(recipe.method).SCORES_THE_START or not cases:
        return
    import torch

    row = {"step": 0, "epoch": 0.0}
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # the random state is put back afterwards: the run trains exactly as it would without this score
    with reporter.phase(f"scoring the starting model on {len(cases)} test cases"), torch.random.fork_rng(cuda):
        if distributed.is_main():  # the first process answers; the others wait for its score
            row["case_score"] = case_score(trainer, recipe, cases)
        row = distributed.broadcast(row)
    recorder.record_start(row)


def train_with_recovery(run: Run, trainer, build, cases: list[tuple[str, str]], recorder):
    """trainer.train() with quickft's callbacks; out of memory with auto_batch goes on from a checkpoint with a
    smaller micro-batch (`build` makes the new trainer). Returns (the trainer that finished, evaluator, stopper)."""
    from quickft.callbacks import Evaluator, LogTheLastStep, StopCallback

    recipe, run_dir, checkpoint = run.recipe, run.run_dir, run.checkpoint
    evaluator = Evaluator(recipe, cases, run_dir, recorder) if recipe.eval.every else None
    stopper = StopOnSignal()
    try:
        while True:
            for callback in (recorder, evaluator, StopCallback(stopper), LogTheLastStep()):
                if callback is not None:
                    trainer.add_callback(callback)
            tracker_callbacks_last(trainer)
            if evaluator:
                evaluator.attach(trainer)
            try:
                with stopper, resuming_quietly(trainer.model, checkpoint):
                    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
                return trainer, evaluator, stopper
            except Exception as e:
                if not is_out_of_memory(e) or distributed.world_size() > 1:  # one process alone cannot retry
                    raise
                checkpoint, recipe = recover_from_oom(e, trainer, recipe, run.choice, run_dir)
                trainer = build(recipe)
    finally:
        recorder.close()


@contextlib.contextmanager
def resuming_quietly(model, checkpoint: Path | None):
    """Resuming a full fine-tune of a model with tied weights, transformers warns that the checkpoint lacks the tied
    copy it never saves ("missing keys ... lm_head.weight"): hidden, as known harmless (quickft.noise)."""
    import logging

    harmless = tied_weights_not_missing(model) if checkpoint is not None else None
    try:
        yield
    finally:
        if harmless is not None:
            logging.getLogger("transformers.trainer").removeFilter(harmless)


def final_evaluation(trainer, recorder, reporter: Reporter) -> dict | None:
    """The eval loss after training, when there was no evaluation during it (every process evaluates its share)."""
    from quickft.callbacks import eval_loss

    if trainer.eval_dataset is None:
        return None
    with recorder.peaks.phase("evaluation"), reporter.phase(f"eval loss on {len(trainer.eval_dataset)} examples"):
        return {"final_eval_loss": eval_loss(trainer)}


def _answer_cases(model, tokenizer, recipe: Recipe, cases: list[tuple[str, str]], reporter: Reporter) -> list[dict]:
    if not cases:
        return []
    from quickft.generation import score_cases

    with reporter.phase(f"answering {len(cases)} test cases"):
        try:
            return score_cases(model, tokenizer, cases, how=recipe.eval.match, max_new_tokens=recipe.max_new_tokens)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
    # training finished and is saved: running out of memory answering (even one case at a time) must not fail it
    reporter.info("test cases not answered: out of memory even one at a time (quickft eval can score them later)")
    return []
