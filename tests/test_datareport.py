"""`quickft data`: what a recipe's data becomes before anything trains (counts, drops, lengths, padding), each figure
recomputed here from the tokenizer."""

import json

from quickft.cli import main
from quickft.report import grouped_reasons
from tests.conftest import PROMPT, write_recipe


def test_data_report_matches_independent_counts(tmp_path, tiny_model_dir, capsys):
    from transformers import AutoTokenizer

    pairs = [(a, b) for a in range(12) for b in (1, 22, 333)]  # answers of 1-3 digits: known, varied lengths
    blocks = [f"Pregunta: ¿Cuánto es {a} + {b}?\nRespuesta: {a + b}" for a, b in pairs]
    blocks += [blocks[0], blocks[5], "Pregunta: ¿vacía?\nRespuesta: "]  # two duplicates, one empty answer
    data = tmp_path / "d.txt"
    data.write_text("\n###\n".join(blocks), encoding="utf-8")
    recipe = write_recipe(
        tmp_path / "d.py",
        f"""
        recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path={str(data)!r}, prompt_template={PROMPT!r}, holdout=0),
                        max_seq_length=18, micro_batch_size=4)
        """,
    )
    assert main(["data", str(recipe), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    answers = [len(tok(str(a + b), add_special_tokens=False)["input_ids"]) + 1 for a, b in pairs]
    lengths_unsorted = [
        len(tok(PROMPT.replace("{prompt}", f"¿Cuánto es {a} + {b}?"))["input_ids"]) + answer
        for (a, b), answer in zip(pairs, answers, strict=True)
    ]
    lengths = sorted(lengths_unsorted)
    longer = sum(n > 18 for n in lengths)
    assert report["counts"] == {
        "read": len(blocks),
        "dropped_reading": 3,
        "held_out_test_cases": 0,
        "held_out_eval": 0,
        "kept_for_training": len(pairs),
        "test_cases_from_file": 0,
        "eval_from_file": 0,
        "rows": len(pairs),  # every answer fits in 18 tokens: long prompts are cut from the left, none dropped
        "documents": 0,
        "dropped_while_tokenizing": 0,
        "truncated": longer,
        "tokens": sum(min(n, 18) for n in lengths),
        "trained_tokens": sum(answers),
    }
    assert sorted(d["reason"] for d in report["dropped"]) == ["duplicate of an earlier example"] * 2 + ["empty answer"]
    assert (report["tokens"]["min"], report["tokens"]["max"]) == (lengths[0], lengths[-1])
    assert report["tokens"]["p50"] == lengths[len(lengths) // 2 - 1 + (len(lengths) % 2)]
    assert report["longer_than_max_seq_length"] == longer == len(report["truncated"])
    assert report["model_max_length"] == 64  # the tiny model's position embeddings
    assert (
        report["recommended_cuts"] <= 0.01 * len(lengths) + 1e-9 or report["recommended_max_seq_length"] >= lengths[-1]
    )
    assert (
        report["padding_share"]["packed"] == 0
        and report["padding_share"]["grouped"] <= report["padding_share"]["padded"]
    )
    assert main(["data", str(recipe), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "kept for training" in out and "[<|endoftext|>]" in out


def test_a_file_with_123_drops_shows_one_line_per_cause(tmp_path, tiny_model_dir, capsys):
    """200 Alpaca records, 123 of them too long for max_seq_length even as answers alone: one 'dropped' line for that
    cause, its length range recomputed here from the tokenizer; every drop stays in --json."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [{"instruction": f"¿{i} + 1?", "output": str(i + 1)} for i in range(77)]
    records += [{"instruction": f"Cuenta {i}", "output": " ".join(["12"] * (20 + i))} for i in range(123)]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    recipe = write_recipe(
        tmp_path / "r.py",
        f"recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path={str(data)!r}, holdout=0), max_seq_length=40)\n",
    )
    assert main(["data", str(recipe), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["dropped"]) == 123
    lengths = [
        len(tok(f"Cuenta {i}\n")["input_ids"]) + len(tok(r["output"])["input_ids"]) + 1
        for i, r in enumerate(records[77:])
    ]
    line = f"123 too long: {min(lengths):,}-{max(lengths):,} tokens > max_seq_length=40; first at {data} (record 78)"
    assert grouped_reasons((d["where"], d["reason"]) for d in report["dropped"]) == [line]
    assert main(["data", str(recipe)]) == 0
    shown = capsys.readouterr().out
    assert shown.count("too long") == 1 and "dropped 123 too long: " in shown
