"""Files shaped like the ones big fine-tuning projects publish (tests/fixtures/data), read into the right examples,
trained with the right loss mask, and counted the same way by `quickft data` and `quickft run`.

The fixtures imitate: Stanford/Chinese Alpaca (alpaca_zh.json), ShareGPT dumps with a system turn (sharegpt.json),
OpenAI chat JSONL with content parts (openai_messages.jsonl), an OpenAI tool-calling trace (tool_calls.jsonl),
LLaMA-Factory's glaive_toolcall ShareGPT (glaive_toolcall.json), {"text"} corpora (text_corpus.jsonl), TRL's
prompt/completion JSONL, a CSV FAQ export with multi-line quoted answers, a one-article-per-line text file, and a
JSON file with its own key names.
"""

from __future__ import annotations

import json

import pytest

from quickft.cli import main
from quickft.data import read_data
from quickft.data.chat_template import CHATML
from quickft.data.encode import encode, prepare
from quickft.errors import UserError
from quickft.recipe import Data, load_recipe
from tests.conftest import ROOT, write_recipe

FIXTURES = ROOT / "tests" / "fixtures" / "data"


def read(name: str, **kwargs):
    return read_data(FIXTURES / name, Data(path=str(FIXTURES / name), **kwargs))[:2]


def roles(example) -> list[str]:
    return [m["role"] for m in example.messages]


def test_alpaca_in_chinese():
    fmt, examples = read("alpaca_zh.json")
    assert fmt == "alpaca" and len(examples) == 4
    assert examples[1].prompt == "将以下句子翻译成英文。\n\n我喜欢学习。" and examples[1].response == "I like to study."
    assert examples[3].response.endswith("🙂")


def test_sharegpt_with_a_system_turn():
    fmt, examples = read("sharegpt.json")
    assert fmt == "sharegpt" and roles(examples[0]) == ["system", "user", "assistant", "user", "assistant"]


def test_openai_messages_with_content_parts():
    fmt, examples = read("openai_messages.jsonl")
    assert fmt == "chat"
    assert examples[1].messages == [
        {"role": "user", "content": "Say hello in Spanish."},
        {"role": "assistant", "content": "¡Hola!"},
    ]


def test_tool_calling_traces():
    fmt, [openai] = read("tool_calls.jsonl")
    assert fmt == "chat" and roles(openai) == ["user", "assistant", "tool", "assistant"]
    assert openai.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert openai.messages[2]["tool_call_id"] == "call_1"
    assert openai.tools[0]["function"]["name"] == "get_weather"
    fmt, [glaive] = read("glaive_toolcall.json")
    assert fmt == "sharegpt" and roles(glaive) == ["user", "assistant", "tool", "assistant"]
    assert glaive.tools == [json.loads(json.dumps(openai.tools[0]["function"]))]  # the JSON string, parsed


def test_text_records_and_pairs():
    fmt, docs = read("text_corpus.jsonl")
    assert fmt == "text" and len(docs) == 3 and all(d.document for d in docs)
    assert docs[0].response.startswith("El sistema solar") and "\n" in docs[0].response
    fmt, pairs = read("prompt_completion.jsonl")
    assert fmt == "pairs" and (pairs[0].prompt, pairs[0].response) == ("The sky is", " blue.")
    fmt, custom = read("custom_keys.json", question_column="pregunta", answer_column="respuesta")
    assert fmt == "pairs" and custom[1].response == "3"


def test_csv_keeps_line_breaks_inside_quoted_fields():
    fmt, examples = read("faq_export.csv", question_column="pregunta", answer_column="respuesta")
    assert fmt == "csv" and len(examples) == 3
    assert examples[0].response == 'Ve a Ajustes > Cuenta.\nPulsa "Olvidé mi contraseña".\nSigue el enlace del correo.'
    assert examples[2].response == "Sí:\n- 3 cuotas sin interés\n- 6 cuotas con interés"
    assert [e.where.rsplit(":", 1)[1] for e in examples] == ["2", "5", "6"]  # the line each row starts on


def test_plain_text_documents_by_line_or_paragraph(tmp_path):
    fmt, docs = read("articles_per_line.txt")
    assert fmt == "text" and len(docs) == 5 and docs[4].response.startswith("Artículo 5.")
    prose = tmp_path / "prose.txt"
    prose.write_text("Uno.\nsigue.\n\n\nDos.\n", encoding="utf-8")
    _, paragraphs, _ = read_data(prose, Data(path=str(prose)))
    assert [d.response for d in paragraphs] == ["Uno.\nsigue.", "Dos."]
    assert [d.where.rsplit(":", 1)[1] for d in paragraphs] == ["1", "5"]
    _, whole, _ = read_data(prose, Data(path=str(prose), documents="file"))
    assert len(whole) == 1


def test_parquet_records(tmp_path):
    from datasets import Dataset

    path = tmp_path / "train.parquet"
    Dataset.from_list([{"instruction": "Di hola", "input": "", "output": "Hola"}] * 2).to_parquet(str(path))
    fmt, examples, _ = read_data(path, Data(path=str(path)))
    assert fmt == "alpaca" and examples[0].response == "Hola" and examples[1].where.endswith("(row 2)")


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message", "fix"),
    [
        ("d.jsonl", '{"foo": 1}\n', {}, "cannot tell the format from the keys ['foo']", "data.question_column"),
        ("b.jsonl", '{"text": "x"}\n', {"format": "blocks"}, "data.format=blocks reads ### text blocks", "auto"),
        ("c.jsonl", '{"text": "x"}\n', {"format": "csv"}, "data.format=csv reads comma-separated rows", "auto"),
        ("t.txt", "Pregunta: a\nRespuesta: b\n", {"format": "alpaca"}, "not JSON (it looks like blocks)", "blocks"),
        ("a.csv", "q,a\nx,y\n", {"format": "alpaca"}, "Alpaca record without 'instruction'", "data.format=auto"),
        (
            "i.jsonl",
            '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}\n',
            {},
            "'image_url' part",
            "text parts",
        ),
    ],
)
def test_wrong_format_for_the_file_says_which_fits(tmp_path, name, content, kwargs, message, fix):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as e:
        read_data(path, Data(path=str(path), **kwargs))
    assert fix in e.value.hint


# ---------------------------------------------------------------------------------------------- pair keys

# Records shaped as each set publishes them (their keys and extra columns), with text of our own.
DOLLY = {
    "instruction": "¿Cuántas patas tiene la araña del texto?",
    "context": "La araña de jardín tiene ocho patas y teje redes.",
    "response": "Ocho.",
    "category": "closed_qa",
}
DOLLY_OPEN = {"instruction": "Di un color primario.", "context": "", "response": "Rojo.", "category": "open_qa"}
METAMATHQA = {
    "query": "Ana tiene 3 cajas de 6 lápices. ¿Cuántos lápices tiene?",
    "response": "3 cajas de 6 son 3 * 6 = 18 lápices.\nThe answer is: 18",
    "type": "GSM_Rephrased",
    "original_question": "Ana tiene 3 cajas con 6 lápices cada una. ¿Cuántos lápices tiene?",
}
MATH = {
    "problem": "Si $x + 3 = 10$, ¿cuánto vale $x$?",
    "level": "Level 1",
    "type": "Algebra",
    "solution": "$x = \\boxed{7}$.",
}
PROMPT_RESPONSE = {"prompt": "Suma 954 y 171.", "response": "954 + 171 = 1125"}
GSM8K = {"question": "¿Cuánto es 48 + 24?", "answer": "48 + 24 = <<48+24=72>>72\n#### 72"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("records", "prompts", "answer", "fmt", "note"),
    [
        (
            [DOLLY, DOLLY_OPEN],
            [f"{DOLLY['instruction']}\n\n{DOLLY['context']}", DOLLY_OPEN["instruction"]],
            "Ocho.",
            "pairs",
            "'instruction' (+ 'context') as the prompt, 'response' as the answer (Dolly)",
        ),
        (
            [METAMATHQA],
            [METAMATHQA["query"]],
            METAMATHQA["response"],
            "pairs",
            "'query' as the prompt, 'response' as the answer (MetaMathQA)",
        ),
        (
            [MATH],
            [MATH["problem"]],
            MATH["solution"],
            "pairs",
            "'problem' as the prompt, 'solution' as the answer (MATH)",
        ),
        (
            [PROMPT_RESPONSE],
            [PROMPT_RESPONSE["prompt"]],
            PROMPT_RESPONSE["response"],
            "pairs",
            "'prompt' as the prompt, 'response' as the answer",
        ),
        ([{"question": "¿2 + 2?", "response": "4"}], ["¿2 + 2?"], "4", "pairs", "'question' as the prompt, 'response'"),
        ([{"input": "hola", "output": "hello"}], ["hola"], "hello", "pairs", "'input' as the prompt, 'output'"),
        ([GSM8K], [GSM8K["question"]], GSM8K["answer"], "pairs", "'question' as the prompt, 'answer' as the answer"),
        (  # Alpaca holds input/output too: the pair inside another is not a second candidate
            [{"instruction": "Traduce.", "input": "gato", "output": "cat"}],
            ["Traduce.\n\ngato"],
            "cat",
            "alpaca",
            "'instruction' (+ 'input') as the prompt, 'output' as the answer (Alpaca)",
        ),
    ],
)
def test_published_pair_keys_are_read_by_one_function(tmp_path, records, prompts, answer, fmt, note):
    path = write_jsonl(tmp_path / "d.jsonl", records)
    read = read_data(path, Data(path=str(path)))
    assert (read.format, [e.prompt for e in read.examples], read.examples[0].response) == (fmt, prompts, answer)
    assert read.note("data.path").startswith(f"data.path: {note}")
    # CSV and parquet hold the same records: read by the same keys
    from datasets import Dataset

    Dataset.from_list(records).to_parquet(str(tmp_path / "d.parquet"))
    again = read_data(tmp_path / "d.parquet", Data(path=str(tmp_path / "d.parquet")))
    assert [(e.prompt, e.response) for e in again.examples] == [(e.prompt, e.response) for e in read.examples]


def test_two_pairs_that_fit_are_exit_2_naming_both_and_the_settings_that_pick_one(tmp_path, capsys):
    path = write_jsonl(tmp_path / "both.jsonl", [{"prompt": "2 + 2", "completion": " 4", "response": "4"}])
    with pytest.raises(UserError) as e:
        read_data(path, Data(path=str(path)))
    assert "both.jsonl:1: 2 pairs of keys fit these records" in e.value.message
    assert "'completion' as the answer" in e.value.message and "'response' as the answer" in e.value.message
    assert e.value.hint == (
        "pick one: data.question_column=prompt data.answer_column=completion, "
        "or data.question_column=prompt data.answer_column=response"
    )
    # either setting of the hint picks one; so does the answer's column alone
    for answer, response in (("completion", " 4"), ("response", "4")):
        picked = read_data(path, Data(path=str(path), question_column="prompt", answer_column=answer))
        assert picked.examples[0].response == response
        assert read_data(path, Data(path=str(path), answer_column=answer)).examples[0].response == response
    # through the CLI: exit 2, the message and the fix, no traceback
    recipe = write_recipe(tmp_path / "r.py", f"recipe = Recipe(model='x', data=Data(path={str(path)!r}))\n")
    assert main(["data", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "2 pairs of keys fit these records" in err and "fix: pick one: data.question_column=prompt" in err
    assert "Traceback" not in err


def test_every_record_is_read_by_the_keys_of_the_first(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [METAMATHQA, {"query": "¿1 + 1?", "answer": "2"}])
    with pytest.raises(UserError, match="mixed.jsonl:2: MetaMathQA record without 'response'") as e:
        read_data(path, Data(path=str(path)))
    assert "every record needs the keys the first one has: 'query' as the prompt" in e.value.hint
    path = write_jsonl(tmp_path / "no_answer.jsonl", [{"query": "¿1 + 1?", "type": "x"}])
    with pytest.raises(UserError, match="no_answer.jsonl:1: 'query' without an answer key") as e:
        read_data(path, Data(path=str(path)))
    assert e.value.hint == "give each record its answer under 'response' (MetaMathQA), or name the answer's key: " + (
        "data.answer_column=KEY"
    )


SHAPED_SUMS = {  # each set's keys (and extra columns) around a sum, so the tiny model's tokenizer knows the text
    "dolly": lambda a, b: {"instruction": "Suma.", "context": f"{a} y {b}", "response": str(a + b), "category": "qa"},
    "metamathqa": lambda a, b: {
        "query": f"¿Cuánto es {a} + {b}?",
        "response": f"{a} + {b} = {a + b}. The answer is: {a + b}",
        "type": "GSM_SV",
        "original_question": f"¿{a} + {b}?",
    },
    "math": lambda a, b: {"problem": f"¿{a} + {b}?", "level": "Level 1", "solution": f"\\boxed{{{a + b}}}"},
    "prompt_response": lambda a, b: {"prompt": f"¿Cuánto es {a} + {b}?", "response": str(a + b)},
}
SHAPED_PROMPTS = {  # the prompt each record of SHAPED_SUMS makes
    "dolly": lambda a, b: f"Suma.\n\n{a} y {b}",
    "metamathqa": lambda a, b: f"¿Cuánto es {a} + {b}?",
    "math": lambda a, b: f"¿{a} + {b}?",
    "prompt_response": lambda a, b: f"¿Cuánto es {a} + {b}?",
}


@pytest.mark.parametrize("shape", list(SHAPED_SUMS))
def test_published_pair_shapes_train_and_answer_as_test_cases(tmp_path, tiny_model_dir, capsys, shape):
    from tests.conftest import PROMPT, SUMS

    make = SHAPED_SUMS[shape]
    train = write_jsonl(tmp_path / "train.jsonl", [make(a, b) for a, b in SUMS[:40]])
    held_out = SUMS[200:204]
    test = write_jsonl(tmp_path / "test.jsonl", [make(a, b) for a, b in held_out])
    recipe = write_recipe(
        tmp_path / f"{shape}.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(train)!r}, test_path={str(test)!r}, prompt_template={PROMPT!r}),
            lora=LoRA(r=4, alpha=8), max_seq_length=48, micro_batch_size=8, max_steps=2, logging_steps=1,
            max_new_tokens=3, backend="peft",
        )
        """,
    )
    assert main(["data", str(recipe), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    keys = read_data(train, Data(path=str(train))).columns.describe()
    assert notes == [f"data.path: {keys}", f"data.test_path: {keys}"]
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"data.path: {keys}" in out and f"data.test_path: {keys}" in out  # the header's notes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["read"] == 40 and summary["data"]["kept_for_training"] == 40
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    answers = [make(a, b) for a, b in held_out]
    answer_key = {"dolly": "response", "metamathqa": "response", "math": "solution", "prompt_response": "response"}
    assert [(s["prompt"], s["reference"]) for s in samples] == [
        (PROMPT.format(prompt=SHAPED_PROMPTS[shape](a, b)), r[answer_key[shape]])
        for (a, b), r in zip(held_out, answers, strict=True)
    ]
    assert summary["test_cases"]["n"] == len(held_out)


# ---------------------------------------------------------------------------------------------- masks


@pytest.fixture(scope="module")
def chatml_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHATML
    return tok


def trained_text(row, tok) -> str:
    return tok.decode([i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m])


@pytest.mark.parametrize(
    ("name", "trained"),
    [
        ("openai_messages.jsonl", "Paris.<|im_end|>\nMadrid.<|im_end|>\n"),
        ("sharegpt.json", "7 × 8 = 56.<|im_end|>\n7 × 9 = 63.<|im_end|>\n"),
        (
            "tool_calls.jsonl",
            '<tool_call>{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '
            '"{\\"city\\": \\"Lima\\"}"}}</tool_call><|im_end|>\nIt is 19 °C and cloudy in Lima.<|im_end|>\n',
        ),
        (
            "glaive_toolcall.json",
            '{"name": "get_weather", "arguments": {"city": "Quito"}}<|im_end|>\nEn Quito hace 14 °C.<|im_end|>\n',
        ),
    ],
)
def test_only_assistant_turns_and_tool_calls_are_trained(chatml_tokenizer, name, trained):
    """System, user and tool-result turns are context; the model learns its answers and its tool calls."""
    example = read(name)[1][0]
    (row,) = encode(example, chatml_tokenizer, Data(path=name))
    assert trained_text(row, chatml_tokenizer) == trained
    rendered = chatml_tokenizer.apply_chat_template(example.messages, tools=example.tools, tokenize=False)
    assert chatml_tokenizer.decode(row["input_ids"]) == rendered  # exactly the sequence inference renders


STRIP_REASONING = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1] }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REASONING_CHAT = [
    {"role": "user", "content": "2 + 2"},
    {"role": "assistant", "content": "<think>dos y dos</think>4"},
    {"role": "user", "content": "3 + 3"},
    {"role": "assistant", "content": "<think>tres y tres</think>6"},
]


def test_a_template_that_strips_history_reasoning_trains_each_turn_with_its_reasoning(chatml_tokenizer):
    """A template that drops earlier reasoning: a row per assistant turn, each with the reasoning it was written with
    (the whole rendering would have lost the first one); history=whole trains only what that rendering keeps."""
    from quickft.data import Example
    from quickft.data.encode import encode_chat

    chatml_tokenizer.chat_template = STRIP_REASONING
    try:
        example = Example(messages=read_chat(REASONING_CHAT), where="r.jsonl:1")
        rows, how = encode_chat(example, chatml_tokenizer, Data(path="r.jsonl"))
        assert how == "per_turn"
        assert [trained_text(r, chatml_tokenizer) for r in rows] == [
            "<think>\ndos y dos\n</think>\n\n4<|im_end|>\n",
            "<think>\ntres y tres\n</think>\n\n6<|im_end|>\n",
        ]
        (row,), how = encode_chat(example, chatml_tokenizer, Data(path="r.jsonl", history="whole"))
        assert trained_text(row, chatml_tokenizer) == "<think>\ntres y tres\n</think>\n\n6<|im_end|>\n"
    finally:
        chatml_tokenizer.chat_template = CHATML


def read_chat(messages):
    """Messages through the chat reader (its <think> and reasoning_content handling)."""
    from quickft.data.readers import _messages

    return _messages(messages, "chat", "r.jsonl:1")


# ---------------------------------------------------------------------------------------------- counts


def fixture_recipe(tmp_path, name: str, max_seq_length: int = 48, **data) -> str:
    fields = ", ".join(f"{k}={v!r}" for k, v in ({"path": str(FIXTURES / name), "holdout": 1} | data).items())
    return str(
        write_recipe(
            tmp_path / "r.py",
            f"""
            recipe = Recipe(
                model=Scratch(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400,
                              max_position_embeddings=512),
                data=Data({fields}),
                mode="full", max_seq_length={max_seq_length}, micro_batch_size=2, max_steps=1, max_new_tokens=2,
            )
            """,
        )
    )


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("alpaca_zh.json", {}),
        ("alpaca_zh.json", {"test_path": str(FIXTURES / "alpaca_zh.json")}),  # test cases from a file of their own
        ("sharegpt.json", {"chat_template": "chatml"}),
        ("openai_messages.jsonl", {"chat_template": "chatml"}),
        ("tool_calls.jsonl", {"chat_template": "chatml", "max_seq_length": 400}),
        ("glaive_toolcall.json", {"chat_template": "chatml", "max_seq_length": 400}),
        ("text_corpus.jsonl", {}),
        ("prompt_completion.jsonl", {}),
        ("faq_export.csv", {"question_column": "pregunta", "answer_column": "respuesta", "too_long": "drop"}),
        ("articles_per_line.txt", {"stride": 32}),
    ],
)
def test_data_report_and_run_count_the_same(tmp_path, capsys, name, data):
    recipe = fixture_recipe(tmp_path, name, **data)
    assert main(["data", recipe, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    run_dir = tmp_path / "run"
    code = main(["run", recipe, "--output-dir", str(run_dir), "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"] == report["counts"]
    c = report["counts"]
    assert c["read"] == c["dropped_reading"] + c["held_out_test_cases"] + c["held_out_eval"] + c["kept_for_training"]
    assert len(report["dropped"]) == c["dropped_reading"] + c["dropped_while_tokenizing"]
    assert c["rows"] >= 1 and report["tokens"]["total"] == c["tokens"]
    assert c["test_cases_from_file"] == (4 if "test_path" in data else 0)


def test_a_prompt_that_fills_max_seq_length_is_counted_not_lost(tmp_path, tiny_model_dir, capsys):
    """The prompt is cut from the left so the answer fits; where even the answer cannot fit, the drop is counted."""
    data = tmp_path / "long.jsonl"
    long_prompt = "Pregunta: " + "¿Cuánto es 1 + 1? " * 20
    records = [{"prompt": long_prompt, "completion": "2"}, {"prompt": "1 + 2", "completion": " 3" * 60}]
    records += [{"prompt": f"{a} + {a}", "completion": str(2 * a)} for a in range(20)]
    data.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    for policy, dropped, cut in (("truncate_prompt", 1, 1), ("drop", 2, 0), ("truncate", 1, 1)):
        recipe = write_recipe(
            tmp_path / f"{policy}.py",
            f"""
            recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path={str(data)!r}, too_long={policy!r},
                            holdout=0), max_seq_length=32, max_steps=1, lora=LoRA(r=2, alpha=4))
            """,
        )
        assert main(["data", str(recipe), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["counts"]["dropped_while_tokenizing"], report["counts"]["truncated"]) == (dropped, cut), policy
        assert report["counts"]["rows"] == 22 - dropped
        assert main(["run", str(recipe), "--output-dir", str(tmp_path / policy), "--quiet"]) == 0
        capsys.readouterr()
        summary = json.loads((tmp_path / policy / "summary.json").read_text())
        assert summary["data"] == report["counts"]
    # the cut example keeps its whole answer and the end of its prompt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = prepare(read_data(data, Data(path=str(data)))[1], tok, load_recipe(tmp_path / "truncate_prompt.py"))
    first = prepared.rows[0]
    assert len(first["input_ids"]) == 32 and first["input_ids"][-1] == tok.eos_token_id
    assert (
        tok.decode([i for i, m in zip(first["input_ids"], first["completion_mask"], strict=True) if m])
        == "2<|endoftext|>"
    )
    assert prepared.truncated[0][1].startswith("prompt cut from the left")
    assert "the answer alone is" in prepared.dropped[0][1]


def test_windows_cover_the_documents_once(tiny_model_dir):
    from transformers import AutoTokenizer

    from quickft.data import Example
    from quickft.data.encode import windows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = [Example(response=f"Pregunta: {a} + {a}. " * 5, document=True) for a in range(10)]
    stream_len = sum(len(tok(d.response, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    rows, lengths = windows(docs, tok, 32)
    assert sum(lengths) == stream_len and all(len(r["input_ids"]) <= 32 for r in rows)
    assert sum(len(r["input_ids"]) for r in rows) == stream_len  # no overlap: every token once
    assert sum(r["input_ids"].count(tok.eos_token_id) for r in rows) == 10  # EOS between documents
    overlapping, _ = windows(docs, tok, 32, stride=24)
    assert sum(sum(r["completion_mask"]) for r in overlapping) == stream_len  # overlap is context, trained once
    assert all(r["completion_mask"][:8] == [0] * 8 for r in overlapping[1:])


def test_a_1mb_text_corpus_trains_as_windows_on_the_demo_model(tmp_path, capsys):
    """Continued pre-training: a 1 MB plain-text corpus, cut into max_seq_length windows for the demo's model."""
    import random

    rng = random.Random(0)
    words = "el la los un una ciencia historia número suma planeta luz energía agua río montaña ciudad libro".split()
    paragraphs, size = [], 0
    while size < 1_000_000:
        paragraph = " ".join(
            " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "." for _ in range(20)
        )
        paragraphs.append(paragraph)
        size += len(paragraph.encode()) + 2
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(paragraphs), encoding="utf-8")
    demo = load_recipe(ROOT / "recipes" / "tiny_math.py")
    spec = demo.model
    recipe = write_recipe(
        tmp_path / "cpt.py",
        f"""
        recipe = Recipe(
            model=Scratch(hidden_size={spec.hidden_size}, num_layers={spec.num_layers}, num_heads={spec.num_heads},
                          intermediate_size={spec.intermediate_size}, vocab_size={spec.vocab_size},
                          max_position_embeddings={spec.max_position_embeddings}),
            data=Data(path={str(corpus)!r}), mode="full", max_seq_length={spec.max_position_embeddings},
            micro_batch_size=16, max_steps=3, learning_rate=1e-3,
        )
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "run"), "--quiet"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    counts = summary["data"]
    assert counts["documents"] == len(paragraphs) and counts["held_out_test_cases"] == 0
    limit = spec.max_position_embeddings
    assert counts["rows"] == -(-counts["tokens"] // limit)  # every window full but the last: no token lost or repeated
    assert counts["trained_tokens"] == counts["tokens"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["loss"] > 0 for r in rows if "loss" in r)


def test_show_decodes_whole_characters_and_cuts_long_examples(tmp_path, capsys):
    recipe = fixture_recipe(tmp_path, "alpaca_zh.json", max_seq_length=400, holdout=0)
    assert main(["data", recipe, "--json"]) == 0
    longest = json.loads(capsys.readouterr().out)["tokens"]["max"]
    assert main(["data", recipe, "--show", "4"]) == 0
    out = capsys.readouterr().out
    assert "以下是保持健康的三个提示" in out and "🙂" in out and "\ufffd" not in out  # bytes split across tokens
    assert ("more tokens)" in out) == (longest > 160)


def test_holdout_never_takes_more_than_a_tenth_and_says_so(tmp_path, capsys):
    recipe = fixture_recipe(tmp_path, "alpaca_zh.json", holdout=5)
    assert main(["data", recipe, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["held_out_test_cases"] == 0 and report["counts"]["kept_for_training"] == 4
    assert report["notes"] == [
        "data.path: 'instruction' (+ 'input') as the prompt, 'output' as the answer (Alpaca)",
        "0 test case(s) held out, not data.holdout=5: at most one in 10 of the 4 examples (give data.test_path for more)",
    ]
    text = fixture_recipe(tmp_path, "text_corpus.jsonl", holdout=2)
    assert main(["data", text, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"][0].startswith("no test cases: text documents")
