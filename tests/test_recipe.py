import re
from pathlib import Path

import pytest

from quickft.data import is_hub_id
from quickft.errors import UserError
from quickft.recipe import (
    Data,
    LoRA,
    Recipe,
    Scratch,
    apply_overrides,
    field_paths,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    validate,
)
from tests.conftest import ROOT, write_recipe


def base() -> Recipe:
    return Recipe(model="microsoft/phi-2", data=Data(path="data/x.txt"))


def test_overrides_are_parsed_to_each_fields_type():
    r = base()
    problems = apply_overrides(
        r,
        [
            "max_steps=20",
            "lora.r=8",
            "learning_rate=1e-4",
            "gradient_checkpointing=true",
            "scheduler=cosine",
            "lora.target_modules=q_proj,v_proj",
            "data.test_path=none",
            "data.train_on_prompt=yes",
            "model=gpt2-xl",
        ],
    )
    assert problems == []
    assert (r.max_steps, r.lora.r, r.learning_rate) == (20, 8, 1e-4)
    assert r.gradient_checkpointing is True and r.data.train_on_prompt is True
    assert r.scheduler == "cosine" and r.lora.target_modules == ["q_proj", "v_proj"]
    assert r.data.test_path is None and r.model == "gpt2-xl"
    assert apply_overrides(r, ["max_steps=none"]) == [] and r.max_steps is None


def test_every_bad_override_is_reported_at_once():
    problems = apply_overrides(base(), ["max_step=20", "lora.r=eight", "scheduler=sideways", "nonsense"])
    assert len(problems) == 4
    assert "unknown key 'max_step'" in problems[0] and "max_steps" in problems[0] and "lora.r" in problems[0]
    assert problems[1].startswith("lora.r='eight': expected an integer")
    assert "expected one of" in problems[2] and "cosine" in problems[2]
    assert "not key=value" in problems[3]


def test_field_paths_lists_nested_keys():
    keys = field_paths()
    assert {"max_steps", "lora.r", "lora.target_modules", "data.path", "data.prompt_template"} <= set(keys)


def test_validation_collects_every_problem():
    r = base()
    r.learning_rate, r.max_steps, r.lora.r, r.micro_batch_size = -1.0, 0, 0, "4"
    problems = validate(r)
    assert problems == ["micro_batch_size: expected int, got '4' (str)"]  # types first: values need right types
    r.micro_batch_size = 4
    problems = validate(r)
    assert any(p.startswith("learning_rate: must be > 0") for p in problems)
    assert any(p.startswith("max_steps: must be > 0") for p in problems)
    assert any(p.startswith("lora.r: LoRA rank must be > 0") for p in problems)


def test_scratch_model_checks():
    r = Recipe(model=Scratch(max_position_embeddings=64), data=Data(path="x"), max_seq_length=128)
    problems = validate(r)
    assert any("longer than the model supports (64)" in p for p in problems)
    assert any(p.startswith("mode:") for p in problems)  # random weights need mode='full'


def test_roundtrip_through_json():
    r = Recipe(model=Scratch(hidden_size=64), data=Data(path="d.txt", test_path="t.txt"), lora=LoRA(r=4), mode="full")
    assert recipe_from_dict(recipe_to_dict(r)) == r
    r2 = base()
    assert recipe_from_dict(recipe_to_dict(r2)) == r2


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.py")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_validates(path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(path)
    assert recipe.name and validate(recipe) == []
    assert Path(recipe.data.path).is_file() or (is_hub_id(recipe.data.path) and not Path(recipe.data.path).exists())
    head = "\n".join(path.read_text(encoding="utf-8").splitlines()[:8])
    assert re.search(rf"^#\s+quickft run recipes/{path.name}$", head, re.M), "a recipe opens with its command"


def test_recipe_file_errors(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.py")
    bad = tmp_path / "syntax.py"
    bad.write_text("x = 1\nrecipe = Recipe(\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"syntax.py:2: syntax error"):
        load_recipe(bad)
    with pytest.raises(UserError, match="no `recipe` defined"):
        load_recipe(write_recipe(tmp_path / "none.py", "x = 1\n"))
    with pytest.raises(UserError, match="is a dict, not a quickft Recipe"):
        load_recipe(write_recipe(tmp_path / "dict.py", "recipe = {'model': 'gpt2'}\n"))
    with pytest.raises(UserError, match=r"raises.py:4: the recipe raised ZeroDivisionError"):
        load_recipe(write_recipe(tmp_path / "raises.py", "\n1 / 0\n"))
    with pytest.raises(UserError, match="unknown key 'lora.rank'") as e:
        load_recipe(
            write_recipe(tmp_path / "ok.py", "recipe = Recipe(model='gpt2', data=Data(path='x'))\n"), ["lora.rank=8"]
        )
    assert "lora.r" in str(e.value)
