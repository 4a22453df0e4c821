"""Recipes: YAML into typed dataclasses, overrides, errors that name the field and the value, the resolved
recipe round trip, and a recipe driving a short real training run on a tiny local model."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import slimtune as st
from slimtune.errors import ConfigError
from slimtune.train import TrainConfig, Trainer
from slimtune.train.recipe import ModelSpec, Recipe, load_model, load_recipe, save_resolved
from tests.train.helpers import pad_collate, tiny_llama, token_data

RECIPE = """\
model: {name: "builtin:smollm2", dtype: float32}
method: {type: lora, r: 16, alpha: 32, targets: all-linear}
data:
  train: {path: data/train.jsonl, schema: chat}
  max_length: 256
  packing: false
train: {steps: 50, batch_size: 4, lr: 2e-4, schedule: cosine, warmup_ratio: 0.1}
output_dir: runs/x
seed: 3
"""


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_recipe_loads_into_typed_dataclasses(recipe_file: Path) -> None:
    recipe = load_recipe(recipe_file)
    assert recipe.model == ModelSpec(name="builtin:smollm2", dtype="float32")
    assert isinstance(recipe.train, TrainConfig)
    assert recipe.train.lr == 2e-4 and recipe.train.steps == 50 and recipe.train.schedule == "cosine"
    assert recipe.train.seed == 3  # the run seed reaches the trainer
    assert recipe.data["train"] == {"path": "data/train.jsonl", "schema": "chat"} and recipe.data["max_length"] == 256
    config = recipe.adapter_config()
    assert isinstance(config, st.LoraConfig) and (config.r, config.alpha) == (16, 32)


def test_overrides_are_parsed_as_yaml(recipe_file: Path) -> None:
    recipe = load_recipe(recipe_file, ["train.lr=1e-3", "train.steps=7", "method.r=4", "data.packing=true",
                                       "train.betas=[0.8, 0.9]", "output_dir=runs/y", "train.max_grad_norm=null"])
    assert recipe.train.lr == 1e-3 and recipe.train.steps == 7 and recipe.train.betas == (0.8, 0.9)
    assert recipe.adapter_config().r == 4 and recipe.data["packing"] is True
    assert recipe.output_dir == "runs/y" and recipe.train.max_grad_norm is None


@pytest.mark.parametrize(("override", "words"), [
    ("train.lr=-1", ["lr", "-1"]),
    ("train.schedule=cosinus", ["schedule", "'cosinus'"]),
    ("train.batch_size=two", ["batch_size", "'two'"]),
    ("train.lrate=0.1", ["lrate", "known options", "lr,"]),
    ("model.dtype=int8", ["dtype", "'int8'"]),
    ("model.name=builtin:gpt5", ["builtin:gpt5", "builtin:smollm2"]),
    ("method.type=loraa", ["'loraa'", "lora"]),
    ("method.rank=4", ["rank", "known options", "alpha"]),
    ("method.r=0", ["r", "0"]),
    ("trian.lr=1", ["'trian'", "known keys", "train"]),
    ("train.lr", ["key.sub=value"]),
])
def test_bad_values_name_the_field_and_the_value(recipe_file: Path, override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(recipe_file, [override])
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_unknown_top_level_key_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE + "optimiser: sgd\n")
    with pytest.raises(ConfigError, match=r"'optimiser'.*known keys: model, method, train, data, output_dir, seed"):
        load_recipe(path)


def test_missing_sections_and_conflicting_seeds_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: builtin:minilm}\ntrain: {steps: 1}\n")
    with pytest.raises(ConfigError, match=r"lacks \['method'\]"):
        load_recipe(path)
    path.write_text(RECIPE)
    with pytest.raises(ConfigError, match=r"train\.seed"):
        load_recipe(path, ["train.seed=4"])
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(path)


def test_saved_resolved_recipe_loads_back_equal(recipe_file: Path, tmp_path: Path) -> None:
    recipe = load_recipe(recipe_file, ["train.lr=5e-4"])
    saved = save_resolved(recipe, tmp_path / "run")
    assert saved == tmp_path / "run" / "recipe.yaml"
    again = load_recipe(saved)
    assert again == recipe and isinstance(again, Recipe)


def test_a_recipe_drives_a_short_training_run_on_a_local_model(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    tiny_llama(seed=2).save_pretrained(folder)
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""\
        model: {{name: "{folder}"}}
        method: {{type: lora, r: 2, alpha: 4, targets: [q_proj, v_proj]}}
        train: {{steps: 3, batch_size: 2, lr: 1e-2, checkpoint_every: 2}}
        output_dir: {tmp_path / "run"}
    """))
    recipe = load_recipe(path)
    model, _ = load_model(recipe.model)
    adapted = st.adapt(model, recipe.adapter_config())
    run_dir = Path(recipe.output_dir)
    save_resolved(recipe, run_dir)
    result = Trainer(adapted, recipe.train, token_data(8), pad_collate, run_dir=run_dir,
                     lineage={"recipe": recipe.to_dict()}).fit()
    assert result.steps == 3 and all(x is not None for x in result.losses)
    reloaded = st.load_adapter(tiny_llama(seed=2), run_dir / "adapter")
    assert reloaded.adapter_names == ["default"]
    assert load_recipe(run_dir / "recipe.yaml") == recipe
