"""`quickft run`: recipe -> data -> model -> SFTTrainer -> a complete run directory.

Order matters: everything that can fail on bad input (recipe, data, model path, output dir) is checked before the
slow imports; unsloth, when chosen, is imported before transformers/trl/peft.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from quickft import distributed, rundir
from quickft.data import Example, clean_examples, read_data
from quickft.encode import Prepared, make_cases, prepare, training_text
from quickft.errors import ProcessLost, RunInterrupted, UserError
from quickft.hardware import Choice
from quickft.models import (
    GGUF,
    check_hub_model,
    dense_checkpoint,
    dense_dtype,
    gguf_record,
    is_cached,
    locate,
    model_max_length,
)
from quickft.preference import Judged
from quickft.recipe import (
    PAIRED_METHODS,
    PREFERENCE_METHODS,
    Recipe,
    Scratch,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    reward_name,
)
from quickft.recovery import StopOnSignal, is_out_of_memory, recover_from_oom
from quickft.report import Reporter


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
        recipe, split, model_ref, local, run_dir = distributed.checked(
            lambda: _read_inputs(recipe_path, overrides, backend, output_dir)
        )
    choice = _choose_backend(recipe, local, reporter)
    run_dir = Path(distributed.broadcast(str(run_dir)))  # under torchrun: rank 0's pick, for every process
    return _guarded(recipe, recipe_path, choice, split, model_ref, local, run_dir, reporter, checkpoint=None)


def _read_inputs(recipe_path: str, overrides: list[str], backend: str | None, output_dir: str | None):
    """Everything that can fail on bad input, before anything loads: the recipe, its data and model, the tracker,
    the run directory."""
    recipe = load_recipe(recipe_path, overrides)
    if backend:
        recipe = replace(recipe, backend=backend)
    split = read_recipe_data(recipe)
    model_ref, local = model_reference(recipe)
    check_tracker(recipe.track)
    run_dir = rundir.pick_run_dir(recipe.name, output_dir or recipe.output_dir)
    rundir.check_writable(run_dir)
    return recipe, split, model_ref, local, run_dir


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
    recipe = recipe_from_dict(found["recipe"])
    reporter.info(f"resuming {run_dir} from {checkpoint.name}")
    with reporter.phase("reading the recipe and data"):
        split, model_ref, local = distributed.checked(lambda: _read_saved_inputs(recipe))
    choice = _choose_backend(recipe, local, reporter)
    return _guarded(recipe, recipe_path, choice, split, model_ref, local, run_dir, reporter, checkpoint=checkpoint)


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


def _read_saved_inputs(recipe: Recipe):
    split = read_recipe_data(recipe)
    model_ref, local = model_reference(recipe)
    check_tracker(recipe.track)
    return split, model_ref, local


def _check_checkpoint_here(checkpoint: Path) -> None:
    if not checkpoint.is_dir():
        raise UserError(
            f"{checkpoint} is not on this machine: the run directory is on rank 0's machine only",
            hint="copy that checkpoint to the same path here, or keep runs on storage every machine shares (a run "
            "that starts on separate storage saves each checkpoint on every machine itself)",
        )


def _choose_backend(recipe: Recipe, local: bool, reporter: Reporter) -> Choice:
    from quickft.backends import choose_backend, private_by_default

    private_by_default(local)
    # torch's import and the GPU check, and Unsloth's import (which patches transformers, trl and peft) when chosen
    with reporter.phase("importing torch and choosing the backend"):
        choice = choose_backend(recipe)
        distributed.start(choice.device)  # under torchrun / accelerate launch: join the other processes
        return choice


def _guarded(recipe, recipe_path, choice, split, model_ref, local, run_dir: Path, reporter, *, checkpoint) -> Path:
    """Train, keeping status.json true whatever happens (running, completed, interrupted, failed); with several
    processes, the first one keeps it."""
    main = distributed.is_main()
    try:
        _train(recipe, recipe_path, choice, split, model_ref, local, run_dir, reporter, checkpoint)
    except (KeyboardInterrupt, RunInterrupted):
        if main and (run_dir / "status.json").is_file():
            rundir.set_status(run_dir, "interrupted")
        raise
    except BaseException as e:
        lost = _lost(e, recipe_path, run_dir, choice) if distributed.lost_peer(e) else None
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


@dataclass
class Split:
    train: list[Example]
    cases: list[tuple[str, str]]
    """Test cases as (prompt text exactly as the model sees it, expected answer); filled once a tokenizer exists."""
    case_examples: list[Example]
    eval: list[Example]
    dropped: list[tuple[str, str]]
    read: int = 0
    """Examples (or documents) read from the file, before anything was dropped or held out."""
    notes: list[str] = field(default_factory=list)
    """What the split did differently from what the recipe asked, and why (shown in the header and `quickft data`)."""
    separate_files: tuple[bool, bool] = (False, False)
    """Whether the test cases and the eval examples came from files of their own (data.test_path, eval.path)."""

    def counts(self, prepared: Prepared) -> dict:
        """The numbers `quickft data` and the run both report, from the file to the training rows:
        read = dropped_reading + held_out_test_cases + held_out_eval + kept_for_training."""
        cases_file, eval_file = self.separate_files
        return {
            "read": self.read,
            "dropped_reading": len(self.dropped),
            "held_out_test_cases": 0 if cases_file else len(self.case_examples),
            "held_out_eval": 0 if eval_file else len(self.eval),
            "kept_for_training": len(self.train),
            "test_cases_from_file": len(self.case_examples) if cases_file else 0,
            "eval_from_file": len(self.eval) if eval_file else 0,
        } | prepared.counts()


HOLDOUT_SHARE = 10  # test cases taken out of the training data: at most one example in ten


def read_recipe_data(recipe: Recipe) -> Split:
    """Training examples (empty answers and duplicates dropped), test cases, and the eval-loss examples."""
    if recipe.method in PREFERENCE_METHODS:
        return read_pairs_split(recipe)
    if recipe.method == "grpo":
        return read_tasks_split(recipe)
    given = replace(recipe.data)  # the other files are read as the recipe says (auto: by their own keys)
    data = read_data(recipe.data.path, recipe.data)
    recipe.data.format = data.format  # saved resolved: chat needs it
    read, examples = len(data.examples), data.examples
    examples, dropped = clean_examples(examples)
    rng = random.Random(recipe.seed)
    notes, holdout = [data.note("data.path")], recipe.data.holdout
    if recipe.data.test_path:
        test = read_data(recipe.data.test_path, given, setting="data.test_path")
        cases = test.examples
        notes.append(test.note("data.test_path"))
    elif all(ex.document for ex in examples):
        cases = []
        if holdout:
            notes.append("no test cases: text documents have no question to answer (give data.test_path for some)")
    else:
        n = min(holdout, len(examples) // HOLDOUT_SHARE)
        if n < holdout:
            notes.append(
                f"{n} test case(s) held out, not data.holdout={holdout}: at most one in {HOLDOUT_SHARE} of the "
                f"{len(examples)} examples (give data.test_path for more)"
            )
        examples, cases = _split(examples, n, rng)
    if recipe.eval.path:
        evaluated = read_data(recipe.eval.path, given, setting="eval.path")
        eval_examples = evaluated.examples
        notes.append(evaluated.note("eval.path"))
    else:
        examples, eval_examples = _split(examples, int(len(examples) * recipe.eval.fraction), rng)
    if not examples:
        raise UserError(f"{recipe.data.path}: no training examples left after the held-out splits")
    cases = cases[: recipe.data.max_test_examples]
    separate = (bool(recipe.data.test_path), bool(recipe.eval.path))
    return Split(examples, [], cases, eval_examples, dropped, read, [n for n in notes if n], separate)


def read_pairs_split(recipe: Recipe) -> Split:
    """method="dpo", "orpo", "simpo": preference pairs to train on, and held-out pairs as test cases (their prompt,
    answered and scored against the chosen answer). method="kto": labelled answers, and held-out desirable ones as
    test cases."""
    from quickft.preference import read_judged, read_pairs

    reader, what = (read_judged, "labelled answers") if recipe.method == "kto" else (read_pairs, "preference pairs")
    shape, pairs, dropped = reader(recipe.data.path, recipe.data)
    notes, read = [f"{what} read as {shape}"], len(pairs) + len(dropped)
    recipe.data.format = "chat" if pairs[0].chat else "pairs"  # how chat and the test cases frame a prompt
    if recipe.data.test_path:  # any prompt/response file, as for SFT
        cases = _test_cases(recipe, notes)
    else:
        candidates = [p for p in pairs if not isinstance(p, Judged) or p.good]  # KTO: a desirable answer is expected
        n = min(recipe.data.holdout, len(candidates) // HOLDOUT_SHARE)
        _, held_out = _split(candidates, n, random.Random(recipe.seed))
        # a held-out KTO answer takes its prompt's other answers with it: none of it is trained on
        prompts = {_prompt_key(p) for p in held_out}
        pairs = [p for p in pairs if _prompt_key(p) not in prompts]
        if not pairs:
            raise UserError(
                f"{recipe.data.path}: nothing left to train on after holding out {n} test case(s): every record "
                "shares a prompt with them",
                hint="set data.holdout=0, or give test cases of their own in data.test_path",
            )
        cases = [
            Example(messages=p.prompt + [_expected(p)], where=p.where, tools=p.tools)
            if p.chat
            else Example(prompt=p.prompt, response=_expected(p), where=p.where)
            for p in held_out
        ]
    if recipe.eval.path:  # eval loss on the same kind of data: pairs, or KTO's labelled answers
        evaluated = reader(recipe.eval.path, recipe.data)[1]
    else:  # by prompt, as the test cases: a KTO prompt's answers stay together
        prompts = sorted({_prompt_key(p) for p in pairs})
        _, picked = _split(prompts, int(len(prompts) * recipe.eval.fraction), random.Random(recipe.seed))
        picked = set(picked)
        pairs, evaluated = (
            [p for p in pairs if _prompt_key(p) not in picked],
            [p for p in pairs if _prompt_key(p) in picked],
        )
    if not pairs:
        raise UserError(f"{recipe.data.path}: no {what} left to train on after the held-out splits")
    cases = cases[: recipe.data.max_test_examples]
    separate = (bool(recipe.data.test_path), bool(recipe.eval.path))
    return Split(pairs, [], cases, evaluated, dropped, read, notes, separate)


def _test_cases(recipe: Recipe, notes: list[str]) -> list[Example]:
    """data.test_path of a preference or GRPO run: any prompt/response file, as for SFT (its keys said in a note)."""
    test = read_data(recipe.data.test_path, replace(recipe.data, format="auto"), setting="data.test_path")
    if test.columns:
        notes.append(test.note("data.test_path"))
    return test.examples


def _prompt_key(item) -> str:
    return json.dumps(item.prompt, sort_keys=True, ensure_ascii=False)


def _expected(item):
    """The answer a held-out test case expects: a pair's chosen one, a KTO record's (desirable) one."""
    return item.answer if isinstance(item, Judged) else item.chosen


def read_tasks_split(recipe: Recipe) -> Split:
    """method="grpo": prompts to train on (with the columns the rewards read), and held-out prompts with answers as
    test cases."""
    from quickft.grpo import read_tasks

    shape, tasks, dropped = read_tasks(recipe.data.path, recipe.data)
    recipe.data.format = "chat" if tasks[0].chat else "pairs"  # how chat and the test cases frame a prompt
    notes, read = [f"prompts read as {shape}"], len(tasks) + len(dropped)
    if recipe.data.test_path:
        cases = _test_cases(recipe, notes)
    else:
        answered = [t for t in tasks if t.answer is not None]
        n = min(recipe.data.holdout, len(answered) // HOLDOUT_SHARE)
        _, held_out = _split(answered, n, random.Random(recipe.seed))
        tasks = [t for t in tasks if not any(t is h for h in held_out)]
        cases = [
            Example(messages=t.prompt + [{"role": "assistant", "content": t.answer}], where=t.where, tools=t.tools)
            if t.chat
            else Example(prompt=t.prompt, response=t.answer, where=t.where)
            for t in held_out
        ]
    cases = cases[: recipe.data.max_test_examples]
    return Split(tasks, [], cases, [], dropped, read, notes, (bool(recipe.data.test_path), False))


def _split(examples: list[Example], n: int, rng: random.Random) -> tuple[list[Example], list[Example]]:
    """(the rest, n examples picked at random), both in file order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    picked = set(order[:n])
    return [e for i, e in enumerate(examples) if i not in picked], [e for i, e in enumerate(examples) if i in picked]


def model_reference(recipe: Recipe) -> tuple[str | Scratch | GGUF, bool]:
    """(local path, hub id, GGUF or Scratch spec; is it local). Checks what can be checked before loading anything."""
    if isinstance(recipe.model, Scratch):
        return recipe.model, True
    path, local = locate(recipe.model)
    if not local:
        check_hub_model(path)
    elif (limit := model_max_length(path)) and recipe.max_seq_length > limit:
        raise UserError(
            f"max_seq_length: {recipe.max_seq_length} is longer than {recipe.model} supports ({limit})",
            hint=f"set max_seq_length={limit} or less",
        )
    return path, local


def _train(recipe, recipe_path, choice, split: Split, model_ref, local, run_dir: Path, reporter, checkpoint) -> None:
    """The run, step by step: load the model, prepare the data, open the run directory, build the trainer, train
    (recovering from out-of-memory), save, answer the test cases, report. Under torchrun every process trains its
    share; only the first one writes."""
    from quickft.metrics import TokenCounter

    model_path, loaded, base = load_model(recipe, choice, model_ref, split, local, reporter)
    choice, tokenizer = loaded.choice, loaded.tokenizer  # PEFT, if Unsloth refused the model
    data = prepare_data(recipe, split, tokenizer, reporter)
    open_run_dir(run_dir, recipe, recipe_path, checkpoint)
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
        return make_trainer(recipe, choice, loaded.model, tokenizer, data.train, run_dir, data.eval, counter=counter)

    with reporter.phase("building the trainer"):
        trainer = build(recipe)
    in_fp32 = None  # on a CPU that trains a LoRA run in bf16: puts it back in fp32 to answer, as chat will
    if choice.device == "cpu":
        choice, in_fp32 = cpu_precision(recipe, choice, trainer, data, run_dir, reporter, resuming=bool(checkpoint))
        if choice.precision == "bf16" and not trainer.args.bf16:  # the probe picked bf16: autocast from now on
            with reporter.phase(f"building the trainer again, for {choice.precision}"):
                if "ref" in getattr(loaded.model, "peft_config", {}):  # TRL copies the adapter again (untrained yet)
                    loaded.model.delete_adapter("ref")
                trainer = build(recipe)  # with the bf16 choice: make_trainer reads the precision from it
    choice, precision_notes = trained_precision(choice, trainer.args)
    if choice.device == "cpu":
        from quickft import cpu
        from quickft.backends import measure_cpu_peak

        with reporter.phase(f"measuring this CPU's {choice.precision} matrix-multiply peak (for MFU)"):
            choice = measure_cpu_peak(choice)
        precision_notes = cpu.header_notes(choice) + cpu.step_notes(recipe, data.prepared) + precision_notes
    precision_notes += attention_notes(recipe, loaded.model)
    header = show_header(
        recipe,
        choice,
        trainer,
        loaded.model,
        model_path,
        split,
        data,
        run_dir,
        reporter,
        precision_notes + reference_notes(recipe, trainer),
        placement_rows(recipe, storage["unseen"]),
        base=base,
    )
    recorder = make_recorder(run_dir, choice, counter, reporter, checkpoint)
    trainer, evaluator, stopper = train_with_recovery(
        trainer, build, recipe, choice, split, run_dir, recorder, checkpoint
    )
    main = distributed.is_main()
    if stopper.requested:  # save what there is, then tell the user how to go on
        resume = distributed.same_launcher(f"quickft run {recipe_path} --resume {run_dir}", choice.device)
        if main:
            write_metric_files(recorder, run_dir, recipe)
            summary = summarize_run(recorder, trainer, reporter, choice, header, run_dir, [], None, recipe.eval.match)
            reporter.report(summary, [])
            rundir.write_json(run_dir / "summary.json", summary | {"data": data.counts, "interrupted": True})
        raise RunInterrupted(run_dir, resume)
    with reporter.phase("saving the model"):
        if recipe.method != "sft" and "ref" in getattr(loaded.model, "peft_config", {}):
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
        samples = _answer_cases(loaded.model, tokenizer, recipe, split.cases, reporter)
    if not main:
        return
    rundir.write_jsonl(run_dir / "samples.jsonl", samples)
    with reporter.phase("writing plots and metrics.csv"):
        write_metric_files(recorder, run_dir, recipe)
    summary = summarize_run(
        recorder, trainer, reporter, choice, header, run_dir, samples, evaluation, recipe.eval.match
    )
    reporter.report(summary, samples)
    rundir.write_json(run_dir / "summary.json", summary | {"data": data.counts})
    reporter.closing(run_dir, next_commands(run_dir, split))


def cpu_precision(
    recipe: Recipe, choice: Choice, trainer, data: Data, run_dir: Path, reporter: Reporter, *, resuming: bool
):
    """(choice, the function that puts a bf16-trained LoRA model back in fp32, or None) once the CPU's precision is
    settled (backends.settle_cpu_precision): with precision=auto and bf16 instructions, a probe times this run's
    own passes in each (the caller builds the trainer again for a bf16 pick, to train under autocast). The pick is
    how the run trains, not how it answers: recipe.json keeps precision=auto, so chat, eval and export load it in
    fp32 as before, and the run answers its test cases in fp32 too. A resumed run goes on in the precision its
    backend.json says it trained in."""
    from quickft.backends import settle_cpu_precision
    from quickft.cpu_speed import probe_batch
    from quickft.hardware import cpu_precision_plan

    previous = None
    if resuming and (run_dir / "backend.json").is_file():
        previous = json.loads((run_dir / "backend.json").read_text(encoding="utf-8")).get("precision")
    found = choice.hardware.cpu if choice.hardware else None
    options = {"mode": recipe.mode, "backend": choice.backend, "processes": distributed.world_size()}
    probe, _ = cpu_precision_plan(found, requested=recipe.precision, **options)
    has = found.bf16_instructions if found and found.bf16_instructions else "unknown instructions"
    what = f"timing this model's passes in fp32 and in bf16 (precision=auto, a CPU with {has})"
    with reporter.phase(what if probe and not previous else "reading the CPU"):
        batch = probe_batch(recipe, trainer, data.prepared) if probe and not previous else None
        return settle_cpu_precision(recipe, choice, trainer.model, batch, previous=previous)


def attention_notes(recipe: Recipe, model) -> list[str]:
    """The header's line when packed examples are attended to one by one (backends.quickft_sdpa)."""
    from quickft.backends import SDPA

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if recipe.data.batching != "packed" or getattr(base.config, "_attn_implementation", None) != SDPA:
        return []
    return [
        "packed rows: each example attends to itself alone, computed example by example (SDPA per example, "
        "instead of the whole row under a block-diagonal mask)"
    ]


def load_model(recipe: Recipe, choice: Choice, model_ref, split: Split, local: bool, reporter: Reporter):
    """(model path, Loaded, the GGUF it came from or None): a Scratch model is built first, a GGUF de-quantized
    first (once, by the first process, then cached)."""
    from quickft.backends import load, quiet_libraries

    quiet_libraries()
    model_path, base = model_ref, None
    if isinstance(model_ref, Scratch):
        with (
            reporter.phase("building the model from its config (cached after the first run)"),
            distributed.main_first(),
        ):
            model_path = materialize(recipe, model_ref, split.train)
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
        return model_path, load(recipe, choice, model_path, local=local), base


@dataclass
class Data:
    """The tokenized training and eval datasets, and the counts `quickft data` and summary.json report."""

    train: object
    eval: object | None
    prepared: Prepared
    counts: dict


def prepare_data(recipe: Recipe, split: Split, tokenizer, reporter: Reporter) -> Data:
    """Examples into token ids, as the trainer will see them; the test cases framed as the model will see them."""
    with reporter.phase("tokenizing the data"):
        training_tokenizer(tokenizer, recipe, split.train)
        split.cases = make_cases(split.case_examples, recipe.data, recipe.eval.cases, tokenizer)
        prepared = training_rows(recipe, split.train, tokenizer)
        train = to_dataset(prepared.rows)
        eval_dataset = to_dataset(training_rows(recipe, split.eval, tokenizer).rows) if split.eval else None
    return Data(train, eval_dataset, prepared, split.counts(prepared))


def training_rows(recipe: Recipe, items: list, tokenizer) -> Prepared:
    """The training rows of each method: SFT's sequences, preference pairs, KTO's labelled answers, GRPO's prompts
    (shared with `quickft bench`)."""
    if recipe.method == "kto":
        from quickft.preference import prepare_judged

        return prepare_judged(items, tokenizer, recipe)
    if recipe.method in PAIRED_METHODS:
        from quickft.preference import prepare_pairs

        return prepare_pairs(items, tokenizer, recipe)
    if recipe.method == "grpo":
        from quickft.grpo import prepare_tasks

        return prepare_tasks(items, tokenizer, recipe)
    return prepare(items, tokenizer, recipe)


def open_run_dir(run_dir: Path, recipe: Recipe, recipe_path: str, checkpoint: Path | None) -> None:
    """Every input check has passed: only now does the run directory appear (written by the first process only)."""
    if not distributed.is_main():
        return
    if checkpoint is None:
        rundir.create_run_dir(run_dir)
        rundir.write_json(run_dir / "recipe.json", recipe_to_dict(recipe))
        rundir.set_status(run_dir, "running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), recipe_file=str(recipe_path))
    else:
        rundir.set_status(run_dir, "running", resumed_from=checkpoint.name)


def reference_notes(recipe: Recipe, trainer) -> list[str]:
    """The header's line on DPO's reference model: what it is, and what it costs in memory (read from the trainer)."""
    if recipe.method == "sft":
        return []
    args = trainer.args  # as the trainer runs them
    lines = []
    if recipe.method == "grpo":
        weights = args.reward_weights or [1.0] * len(trainer.reward_func_names)
        rewards = " + ".join(
            reward_name(f) if w == 1.0 else f"{w:g} × {reward_name(f)}"
            for f, w in zip(recipe.grpo.rewards, weights, strict=True)
        )
        lines = [
            f"GRPO: {args.num_generations} answers per prompt (temperature {args.temperature:g}, up to "
            f"{args.max_completion_length} tokens), loss {args.loss_type}, clip {args.epsilon:g}"
            + ("; an answer cut at the limit adds nothing to the loss" if args.mask_truncated_completions else ""),
            f"GRPO's reward: {rewards}",
        ]
        if args.beta == 0:
            return lines + ["GRPO's KL coefficient beta is 0: no reference model (no KL term), nothing kept in memory"]
        beta = f"GRPO's KL term (beta {args.beta:g}) against a reference model: "
    elif recipe.method == "orpo":
        return [
            f"ORPO: the chosen sequence's SFT loss (its prompt included, as TRL's ORPO computes it) + {args.beta:g} "
            "× the odds-ratio term (chosen answer over rejected); no reference model, nothing more in memory than SFT"
        ]
    elif recipe.method == "simpo":
        sft = f" + {args.cpo_alpha:g} × the chosen answer's SFT loss" if args.cpo_alpha else ""
        return [
            f"SimPO: length-normalized rewards (beta {args.beta:g}), target margin {args.simpo_gamma:g}{sft}; "
            "no reference model, nothing more in memory than SFT"
        ]
    elif recipe.method == "kto":
        kl = (
            "KL estimated from mismatched prompt/answer pairs of each micro-batch, whose order is fixed (shuffled "
            "once, with the recipe's seed)"
            if args.loss_type == "kto"
            else "no KL estimate"
        )
        beta = (
            f"KTO (beta {args.beta:g}, loss {args.loss_type}, weights {args.desirable_weight:g} desirable / "
            f"{args.undesirable_weight:g} undesirable; {kl}) against a reference model: "
        )
    else:
        weights = args.loss_weights or [1.0] * len(args.loss_type)
        names = ["the chosen answer's SFT loss" if t == "sft" else t for t in args.loss_type]
        loss = " + ".join(n if w == 1.0 else f"{w:g} × {n}" for n, w in zip(names, weights, strict=True))
        lines, beta = [], f"DPO (beta {args.beta:g}, loss {loss}) against a reference model: "
    return lines + _reference_text(trainer, beta)


def _reference_text(trainer, beta: str) -> list[str]:
    if trainer.ref_model is not None:
        params = list(trainer.ref_model.parameters())
        size = sum(p.numel() * p.element_size() for p in params)
        return [
            beta + f"a second copy of the model ({sum(p.numel() for p in params):,} weights, {size / 2**20:,.1f} MB "
            "in memory; mode=lora needs none)"
        ]
    ref = [p for n, p in trainer.model.named_parameters() if ".ref." in n]
    if ref:  # TRL copies the starting adapter into a frozen "ref" adapter: the base plus an adapter that is zero
        size = sum(p.numel() * p.element_size() for p in ref)
        return [
            beta + f"the base with LoRA's starting adapter, kept as a frozen copy ({sum(p.numel() for p in ref):,} "
            f"weights, {size / 2**20:,.2f} MB): no second model in memory"
        ]
    return [beta + "the base with the adapter switched off: no second model in memory"]


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


def show_header(
    recipe,
    choice,
    trainer,
    model,
    model_path,
    split: Split,
    data: Data,
    run_dir,
    reporter,
    notes=(),
    placement=(),
    *,
    base=None,
) -> dict:
    """The header, and backend.json: the model as the trainer holds it (TRL and Unsloth may have changed it), and
    for a GGUF base, the GGUF it was de-quantized from (chat and export find it there)."""
    from quickft.backends import model_facts

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
        n_sequences=len(trainer.train_dataset) * (recipe.grpo.num_generations if recipe.method == "grpo" else 1),
        n_tokens=data.prepared.tokens,
        run_dir=run_dir,
        max_steps=trainer.args.max_steps if trainer.args.max_steps > 0 else None,
        dropped=split.dropped + data.prepared.dropped,
        truncated=data.prepared.truncated,
        documents=data.prepared.documents,
        notes=split.notes + data.prepared.notes + gpu_notes(choice) + list(notes),
        n_eval=len(split.eval),
        n_cases=len(split.cases),
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


def placement_rows(recipe: Recipe, unseen: list[str]) -> list[tuple[str, str]]:
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

    from quickft.launch import launched

    how, here = launched(), socket.gethostname()
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


def make_recorder(run_dir: Path, choice: Choice, counter, reporter: Reporter, checkpoint: Path | None):
    """The callback that records metrics.jsonl; a resumed run's report covers the whole run, so its earlier rows
    (the first process reads them) carry on."""
    from quickft.recorder import Recorder

    metrics = run_dir / "metrics.jsonl"
    earlier = []
    if distributed.is_main() and checkpoint is not None and metrics.is_file():
        earlier = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
    return Recorder(metrics, choice.device, counter, reporter, earlier_rows=earlier)


def train_with_recovery(
    trainer, build, recipe: Recipe, choice: Choice, split: Split, run_dir: Path, recorder, checkpoint
):
    """trainer.train() with quickft's callbacks; out of memory with auto_batch goes on from a checkpoint with a
    smaller micro-batch (`build` makes the new trainer). Returns (the trainer that finished, evaluator, stopper)."""
    from quickft.trainer import Evaluator, StopCallback

    evaluator = Evaluator(recipe, split.cases, run_dir, recorder) if recipe.eval.every else None
    stopper = StopOnSignal()
    try:
        while True:
            for callback in (recorder, evaluator, StopCallback(stopper)):
                if callback is not None:
                    trainer.add_callback(callback)
            tracker_callbacks_last(trainer)
            if evaluator:
                evaluator.attach(trainer)
            try:
                with stopper:
                    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
                return trainer, evaluator, stopper
            except Exception as e:
                if not is_out_of_memory(e) or distributed.world_size() > 1:  # one process alone cannot retry
                    raise
                checkpoint, recipe = recover_from_oom(e, trainer, recipe, choice, run_dir)
                trainer = build(recipe)
    finally:
        recorder.close()


def final_evaluation(trainer, recorder, reporter: Reporter) -> dict | None:
    """The eval loss after training, when there was no evaluation during it (every process evaluates its share)."""
    from quickft.trainer import eval_loss

    if trainer.eval_dataset is None:
        return None
    with recorder.peaks.phase("evaluation"), reporter.phase(f"eval loss on {len(trainer.eval_dataset)} examples"):
        return {"final_eval_loss": eval_loss(trainer)}


def summarize_run(recorder, trainer, reporter, choice, header, run_dir, samples, evaluation, match) -> dict:
    """summary.json: the recorder's measurements and the trainer's state, through quickft.metrics' arithmetic."""
    from quickft import metrics as m

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
    if header.get("method") in PREFERENCE_METHODS:
        summary["preference"] = m.preference_summary(recorder.rows, header["method"])
    if header.get("method") == "grpo":
        summary["grpo"] = m.grpo_summary(recorder.rows, recorder.totals, recorder.step_s)
    if samples:
        correct = sum(s["correct"] for s in samples)
        summary["test_cases"] = {"n": len(samples), "score": correct / len(samples), "correct": correct, "match": match}
    summary["evaluation"] = evaluation
    if recorder.eval_rows:
        summary["evaluation"] = (evaluation or {}) | {"history": recorder.eval_rows}
    return summary


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}


def check_tracker(track: str) -> None:
    """The tracker's package must be installed: say so before anything loads, with the install command."""
    import importlib.util

    package = TRACKER_PACKAGES.get(track)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(
            f"track={track}: the {package} package is not installed", hint=f"pip install {package}, or set track=none"
        )


def tracker_settings(recipe: Recipe, run_dir: Path) -> dict:
    """SFTConfig's report_to and its companions for the recipe's tracker (transformers' own integrations)."""
    if recipe.track == "none":
        return {"report_to": "none"}
    if recipe.track == "tensorboard":  # transformers' TensorBoard callback reads its folder from the environment
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    return {"report_to": [recipe.track], "run_name": run_dir.name, "project": recipe.name}


def tracker_callbacks_last(trainer) -> None:
    """Move the tracker's callback after quickft's: quickft's on_log adds its measured figures (tokens/s, memory,
    smoothed loss) to the logs the tracker then sends, so the tracker shows what metrics.jsonl says."""
    from transformers.integrations import get_reporting_integration_callbacks

    for cls in get_reporting_integration_callbacks(trainer.args.report_to):
        callback = trainer.pop_callback(cls)
        if callback is not None:
            trainer.add_callback(callback)


def write_metric_files(callback, run_dir: Path, recipe: Recipe) -> None:
    """metrics.csv and the plots, from every row of the run (a resumed run's earlier rows included)."""
    from quickft.plots import write_plots

    rows = sorted(callback.rows + callback.eval_rows, key=lambda r: r["step"])
    write_plots(rows, run_dir, name=run_dir.name, target=recipe.eval.target)
    rundir.write_csv(run_dir / "metrics.csv", rows)


def next_commands(run_dir: Path, split: Split) -> list[str]:
    """What a user runs next with this run directory."""
    commands = [f"quickft chat {run_dir}    # talk to it"]
    if split.case_examples:
        commands.append(f"quickft eval {run_dir}    # score the test cases again (--cases FILE for others)")
    commands.append(f"quickft compare {run_dir} OTHER_RUN    # side by side with another run")
    commands.append(f"quickft export {run_dir} --to ollama    # use it elsewhere: --to merged (transformers), gguf")
    return commands


def materialize(
    recipe: Recipe, model_ref: str | Scratch | GGUF, train_examples: list[Example], *, dtype: str | None = None
) -> str:
    """The model's path or hub id; a Scratch model is built (or found in the cache) first, a GGUF de-quantized to
    `dtype` (or, with dtype None, its tokenizer only: what `quickft data` needs)."""
    if isinstance(model_ref, GGUF):
        return str(dense_checkpoint(model_ref, dtype).path)
    if not isinstance(model_ref, Scratch):
        return model_ref
    from quickft.models.scratch import build_scratch

    corpus = [training_text(ex, recipe.data) for ex in train_examples]
    return str(build_scratch(model_ref, corpus, seed=recipe.seed))


def training_tokenizer(tokenizer, recipe: Recipe, examples: list[Example]) -> None:
    """The tokenizer as training uses it (pad token, the recipe's chat template), and chat data needs a template."""
    from quickft.backends import prepare_tokenizer

    prepare_tokenizer(tokenizer, recipe, training=True)
    chat = any(getattr(ex, "messages", None) is not None or getattr(ex, "chat", False) for ex in examples)
    if chat and not tokenizer.chat_template:
        vocab = tokenizer.get_vocab()
        if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
            hint = 'its tokenizer has ChatML\'s tokens: set data=Data(..., chat_template="chatml") in the recipe'
        else:
            hint = (
                "train from the model's instruct/chat version (its tokenizer has the template), or give "
                "data.chat_template a Jinja template written with this tokenizer's own special tokens"
            )
        raise UserError(
            f"{recipe.data.path}: chat data, but the tokenizer of {recipe.model} has no chat template", hint=hint
        )


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def make_trainer(
    recipe: Recipe,
    choice: Choice,
    model,
    tokenizer,
    dataset,
    run_dir: Path,
    eval_dataset=None,
    *,
    counter=None,
    settings: dict | None = None,
):
    """TRL's SFTTrainer (DPOTrainer, ORPOTrainer, CPOTrainer, KTOTrainer, GRPOTrainer for the other methods), as
    quickft.trainer's counting subclass (counting into `counter`, a new one by default), with the recipe's settings,
    and `settings`: more config fields, set explicitly (bench's like-for-like ones)."""
    from quickft.metrics import TokenCounter

    common = dict(
        output_dir=str(run_dir / "checkpoints"),
        max_length=recipe.max_seq_length,
        per_device_train_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.scheduler,
        warmup_steps=recipe.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        seed=recipe.seed,
        data_seed=recipe.seed,
        optim=recipe.optimizer,
        logging_steps=recipe.logging_steps,
        bf16=choice.precision == "bf16",
        fp16=choice.precision == "fp16",
        use_cpu=choice.device == "cpu",
        gradient_checkpointing=recipe.gradient_checkpointing and choice.backend == "peft",
        save_strategy="steps" if recipe.save_every else "no",
        save_steps=recipe.save_every or 500,
        save_total_limit=recipe.keep_checkpoints,
        # machines that do not see rank 0's run directory keep their own copy of each checkpoint, for --resume
        save_on_each_node=not distributed.storage_shared(),
        **tracker_settings(recipe, run_dir),
        disable_tqdm=True,
        dataset_num_proc=None,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if recipe.data.batching == "grouped" else "random",
        per_device_eval_batch_size=recipe.micro_batch_size,
        # under torchrun: every trainable weight (LoRA's, or all of a full fine-tune's) gets a gradient each step, so
        # DDP need not search the graph for unused ones; "all-linear" may adapt layers the forward never uses (a
        # model's unused heads), so there it is left to transformers
        ddp_find_unused_parameters=False
        if distributed.world_size() > 1 and recipe.lora.target_modules != "all-linear"
        else None,
        **distributed.fsdp_settings(recipe),  # FSDP2 sharding, for recipe.distributed="fsdp" on several processes
        # evaluation in the training precision, never the model cast to 16-bit in place (Unsloth's default)
        fp16_full_eval=False,
        bf16_full_eval=False,
    )
    if recipe.method == "dpo":
        from trl import DPOConfig

        from quickft.trainer import CountingDPOTrainer as Trainer

        args = DPOConfig(
            **common,
            beta=recipe.dpo.beta,
            loss_type=[recipe.dpo.loss_type] + (["sft"] if recipe.dpo.sft_weight else []),
            loss_weights=[1.0, recipe.dpo.sft_weight] if recipe.dpo.sft_weight else None,
            label_smoothing=recipe.dpo.label_smoothing,
            padding_free=False,
            **(settings or {}),
        )
    elif recipe.method == "orpo":
        from quickft.trainer import CountingORPOTrainer as Trainer
        from quickft.trainer import ORPOConfig

        args = ORPOConfig(**common, beta=recipe.orpo.beta, **(settings or {}))
    elif recipe.method == "simpo":
        from quickft.trainer import CountingCPOTrainer as Trainer
        from quickft.trainer import CPOConfig

        s = recipe.simpo
        args = CPOConfig(
            **common,
            loss_type="simpo",
            beta=s.beta,
            simpo_gamma=s.gamma_beta_ratio * s.beta,
            cpo_alpha=s.sft_weight,
            **(settings or {}),
        )
    elif recipe.method == "kto":
        from trl import KTOConfig

        from quickft.trainer import CountingKTOTrainer as Trainer

        k = recipe.kto
        args = KTOConfig(
            **common | {"train_sampling_strategy": "sequential"},  # prepare_judged shuffled the rows once
            beta=k.beta,
            loss_type=k.loss_type,
            desirable_weight=k.desirable_weight,
            undesirable_weight=k.undesirable_weight,
            **(settings or {}),
        )
    elif recipe.method == "grpo":
        return grpo_trainer(recipe, model, tokenizer, dataset, common, counter or TokenCounter(), settings)
    else:
        from trl import SFTConfig

        from quickft.trainer import CountingTrainer as Trainer

        # on a CPU, TRL's default chunked loss (it recomputes the output head per chunk to hold fewer logits, for a
        # GPU's memory) cost SmolLM2's bf16 steps 10-17% (3.24-3.30 s vs 2.73-2.96 s, the same losses)
        cpu_loss = {"loss_type": "nll"} if choice.device == "cpu" else {}
        args = SFTConfig(
            **common,
            completion_only_loss=not recipe.data.train_on_prompt,
            packing=recipe.data.batching == "packed",
            **cpu_loss | (settings or {}),
        )
    one_gpu_per_process(args)
    with distributed.fsdp_on_cpu(args):  # accelerate's FSDP on CPU processes too (gloo)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            counter=counter or TokenCounter(),
        )
    return _quiet(trainer)


def _quiet(trainer):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # quickft's reporter owns the console
    trainer.remove_callback(ProgressCallback)
    # Unsloth's trainer turns full 16-bit evaluation on, which casts the model in place before test cases are answered
    trainer.args.fp16_full_eval = trainer.args.bf16_full_eval = False
    return trainer


def grpo_trainer(recipe: Recipe, model, tokenizer, dataset, common: dict, counter, settings: dict | None):
    """TRL's GRPOTrainer (quickft.trainer's counting subclass) with the recipe's rewards, each guarded so a reward
    that fails names itself and the example (quickft.rewards)."""
    from trl import GRPOConfig

    from quickft.grpo import completion_length
    from quickft.rewards import guarded
    from quickft.trainer import CountingGRPOTrainer

    g = recipe.grpo
    common = {k: v for k, v in common.items() if k not in ("max_length", "dataset_num_proc")}  # not GRPO's
    args = GRPOConfig(
        **common,
        num_generations=g.num_generations,
        max_completion_length=completion_length(recipe),
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        reward_weights=g.reward_weights,
        mask_truncated_completions=g.mask_truncated_completions,
        **(settings or {}),
    )
    one_gpu_per_process(args)
    trainer = CountingGRPOTrainer(
        model=model,
        reward_funcs=[guarded(fn) for fn in g.rewards],  # each checked against the data's columns in prepare_tasks
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        counter=counter,
        chat=recipe.data.format == "chat",
    )
    return _quiet(trainer)


def one_gpu_per_process(args) -> None:
    """One process trains on one GPU. On a machine with several, transformers would wrap the model in
    nn.DataParallel over all of them (a batch silently that many times larger, memory figures of GPU 0 only);
    several GPUs are torchrun's (`quickft run --gpus N`), one process each."""
    if distributed.world_size() == 1 and args.n_gpu > 1:
        args._n_gpu = 1


def gpu_notes(choice: Choice) -> list[str]:
    """The header's line for a machine with GPUs this run leaves idle."""
    if choice.device != "cuda" or distributed.world_size() > 1:
        return []
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return []
    return [f"{count} GPUs here: this run trains on GPU 0; `quickft run RECIPE --gpus {count}` trains on all of them"]


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
