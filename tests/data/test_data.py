import json

import pytest

from quickft.data import guess_format, read_examples
from quickft.data.chat_template import CHATML
from quickft.data.encode import encode, prompt_text
from quickft.errors import UserError
from quickft.recipe import Data


def read(tmp_path, name, content, **data_kwargs):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return read_examples(path, Data(path=str(path), **data_kwargs))


def test_blocks_tolerate_crlf_bom_blank_lines_and_multiline_answers(tmp_path):
    text = (
        "\ufeffPregunta: ¿Cuánto es 2 + 2?\r\nRespuesta: 4\r\n###\r\n\r\n\r\n"
        "Pregunta: ¿Qué es un primo?\r\nRespuesta: Un número\r\ncon dos divisores.\r\n###\r\n"
    )
    examples = read(tmp_path, "t.txt", text)
    assert [(e.prompt, e.response) for e in examples] == [
        ("¿Cuánto es 2 + 2?", "4"),
        ("¿Qué es un primo?", "Un número\ncon dos divisores."),
    ]
    assert examples[1].where.endswith("t.txt:6")


def test_alpaca_json_and_jsonl(tmp_path):
    records = [
        {"instruction": "Di hola", "input": "", "output": "Hola"},
        {"instruction": "Traduce", "input": "cat", "output": "gato"},
    ]
    for name, content in [("a.json", json.dumps(records)), ("a.jsonl", "\n".join(json.dumps(r) for r in records))]:
        examples = read(tmp_path, name, content)
        assert [(e.prompt, e.response) for e in examples] == [("Di hola", "Hola"), ("Traduce\n\ncat", "gato")]


def test_chat_and_sharegpt(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hola"}, {"role": "assistant", "content": "¡hola!"}]}
    share = {"conversations": [{"from": "human", "value": "hola"}, {"from": "gpt", "value": "¡hola!"}]}
    assert read(tmp_path, "c.jsonl", json.dumps(chat))[0].messages == chat["messages"]
    assert read(tmp_path, "s.jsonl", json.dumps(share))[0].messages == chat["messages"]


def test_csv_with_named_columns_and_plain_text(tmp_path):
    examples = read(
        tmp_path,
        "q.csv",
        "pregunta,respuesta\n¿2+3?,5\n¿1+1?,2\n",
        question_column="pregunta",
        answer_column="respuesta",
    )
    assert [(e.prompt, e.response) for e in examples] == [("¿2+3?", "5"), ("¿1+1?", "2")]
    texts = read(tmp_path, "t.md", "Primer párrafo.\n\nSegundo\npárrafo.\n")
    assert [e.response for e in texts] == ["Primer párrafo.", "Segundo\npárrafo."]


def test_format_guessing(tmp_path):
    from pathlib import Path

    assert guess_format(Path("x.csv"), "") == "csv"
    assert guess_format(Path("x.txt"), "Pregunta: a\nRespuesta: b") == "blocks"
    assert guess_format(Path("x.txt"), "just prose") == "text"
    assert guess_format(Path("x.jsonl"), '{"messages": []}') == "chat"
    assert guess_format(Path("x.jsonl"), '{"conversations": []}') == "sharegpt"
    assert guess_format(Path("x.jsonl"), '{"instruction": "a", "output": "b"}') == "alpaca"


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message"),
    [
        (
            "b.txt",
            "Pregunta: a\nRespuesta: b\n###\nPregunta: sin respuesta\n",
            {},
            r"b.txt:4: block has no 'Respuesta:'",
        ),
        ("e.txt", "  \n\n", {}, "the file is empty"),
        ("l.bin", b"Pregunta: \xff\xfe\nRespuesta: x", {"format": "blocks"}, "not UTF-8"),
        (
            "j.jsonl",
            '{"instruction": "a", "output": "b"}\n{"instruction": "a",\n',
            {},
            r"j.jsonl:2: invalid JSON Lines",
        ),
        (
            "m.jsonl",
            '{"instruction": "a", "input": ""}\n',
            {"format": "alpaca"},
            r"m.jsonl:1: Alpaca record without 'output'",
        ),
        ("n.jsonl", '{"messages": [{"role": "user", "content": "hola"}]}\n', {}, "without an assistant turn"),
        ("r.jsonl", '{"messages": [{"role": "bot", "content": "hola"}]}\n', {}, "unknown role 'bot'"),
        ("c.csv", "q,a\nx,y\n", {}, r"CSV without prompt and answer columns quickft knows \(columns: a, q\)"),
        ("z.txt", "Pregunta: a\nRespuesta:\n###\nPregunta: b\nRespuesta:  \n", {}, "every response is empty"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, name, content, kwargs, message):
    with pytest.raises(UserError, match=message):
        read(tmp_path, name, content, **kwargs)


def test_missing_data_file(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_examples(tmp_path / "nope.txt", Data(path="nope.txt"))


def test_encode_masks_the_prompt_and_ends_with_eos(tiny_model_dir, sums_file):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = Data(path=str(sums_file), prompt_template="Pregunta: {prompt}\nRespuesta: ")
    example = read_examples(sums_file, data)[7]
    (row,) = encode(example, tok, data)
    prompt_ids = tok(prompt_text(example, tok, data))["input_ids"]
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids  # inference sees exactly the training prefix
    assert row["completion_mask"] == [0] * len(prompt_ids) + [1] * (len(row["input_ids"]) - len(prompt_ids))
    assert row["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(row["input_ids"][len(prompt_ids) : -1]) == example.response
    (everything,) = encode(example, tok, Data(path="x", prompt_template=data.prompt_template, train_on_prompt=True))
    assert set(everything["completion_mask"]) == {1}


def test_encode_chat_trains_only_assistant_turns(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHATML
    messages = [
        {"role": "user", "content": "2 + 2"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3 + 3"},
        {"role": "assistant", "content": "6"},
    ]
    example = read(tmp_path, "c.jsonl", json.dumps({"messages": messages}))[0]
    (row,) = encode(example, tok, Data(path="c.jsonl"))
    trained = tok.decode([i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m])
    assert trained == "4<|im_end|>\n6<|im_end|>\n"
    assert tok.decode(row["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)
