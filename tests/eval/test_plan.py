"""A recipe's ``eval:`` section: accepted by Recipe (round trip through recipe.yaml), validated with errors that
name the bad key and list the known ones, and turned into one plan (suite, latency, prices) that
``slimtune train``, ``slimtune eval`` and the ablation cells share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slimtune.errors import ConfigError
from slimtune.eval.efficiency import LatencyConfig, PriceTable
from slimtune.eval.plan import DEFAULT_LATENCY, eval_keys, eval_plan
from slimtune.train.recipe import load_recipe, recipe_from_dict, save_resolved

BASE: dict[str, Any] = {
    "model": {"name": "builtin:minilm"},
    "method": {"type": "lora", "r": 4},
    "train": {"steps": 3},
    "data": {
        "train": {"path": "train.jsonl", "schema": "classification"},
        "eval": {"dev": {"path": "dev.jsonl", "schema": "classification"}},
        "max_length": 48,
    },
}
EVAL: dict[str, Any] = {
    "sets": {
        "test": {"path": "test.jsonl", "schema": "classification"},
        "ood": {"path": "ood.jsonl", "schema": "classification", "kind": "ood"},
    },
    "forgetting": False,
    "batch_size": 7,
    "n_resamples": 123,
    "latency": {"batch_sizes": [1, 3], "seq_len": 8, "warmup": 0, "repeats": 2},
    "prices": {"cpu": 0.25, "currency": "EUR"},
}


def test_a_recipe_accepts_an_eval_section_and_saves_it(tmp_path: Path) -> None:
    recipe = recipe_from_dict({**BASE, "eval": EVAL})
    assert recipe.eval == EVAL
    again = load_recipe(save_resolved(recipe, tmp_path))
    assert again == recipe and again.eval == EVAL
    plain = recipe_from_dict(BASE)
    assert plain.eval is None and "eval" not in plain.to_dict()  # no section: no evaluation after training


def test_the_plan_holds_every_part_of_the_section() -> None:
    plan = eval_plan({**BASE, "eval": EVAL})
    assert [(s.name, s.kind) for s in plan.suite.sets] == [("test", "id"), ("ood", "ood")]
    assert plan.suite.batch_size == 7 and plan.suite.n_resamples == 123 and plan.suite.forgetting is None
    assert plan.suite.max_length == 48  # from data.max_length
    assert plan.latency == LatencyConfig(batch_sizes=(1, 3), seq_len=8, warmup=0, repeats=2)
    assert plan.prices.currency == "EUR" and plan.prices.prices["cpu"] == 0.25


def test_defaults_come_from_data_eval_and_arguments_override_the_section() -> None:
    plan = eval_plan({**BASE, "eval": {"n_resamples": 50}})
    assert [s.name for s in plan.suite.sets] == ["dev"] and plan.suite.sets[0].data["path"] == "dev.jsonl"
    assert plan.latency == DEFAULT_LATENCY and plan.prices == PriceTable()
    assert eval_plan({**BASE, "eval": {"latency": False}}).latency is None
    given = LatencyConfig(batch_sizes=(2,), seq_len=4, warmup=0, repeats=1)
    overridden = eval_plan({**BASE, "eval": EVAL}, suite={"batch_size": 3}, latency=given, prices={"cpu": 9.0})
    assert overridden.suite.batch_size == 3 and [s.name for s in overridden.suite.sets] == ["dev"]
    assert overridden.latency == given and overridden.prices.prices["cpu"] == 9.0
    assert eval_plan({**BASE, "eval": EVAL}, latency=None).latency is None


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"set": {}}, ["'set'", "known options", "sets", "latency", "prices", "n_resamples"]),
        ({"n_resamples": 0}, ["n_resamples", "0"]),
        ({"latency": {"batch_size": [1]}}, ["eval.latency", "'batch_size'", "batch_sizes"]),
        ({"latency": {"repeats": -1}}, ["repeats", "-1"]),
        ({"latency": "fast"}, ["eval.latency", "'fast'"]),
        ({"prices": {"cpu": -1}}, ["price", "-1"]),
        ({"sets": {"x": {"path": "x.jsonl", "colums": {}}}}, ["eval.sets.x", "'colums'", "max_rows"]),
        ({"sets": {"x": {"path": "x.jsonl", "kind": "odd"}}}, ["eval.sets.x.kind", "'odd'"]),
        ({"task": "ranking"}, ["eval.task", "'ranking'"]),
        ([1, 2], ["eval must be a mapping"]),
    ],
)
def test_bad_eval_sections_are_config_errors_naming_the_key(section: Any, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**BASE, "eval": section})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_an_eval_section_needs_sets_somewhere() -> None:
    data = {"train": BASE["data"]["train"]}
    with pytest.raises(ConfigError, match=r"no sets: give eval\.sets or data\.eval"):
        recipe_from_dict({**BASE, "data": data, "eval": {"batch_size": 4}})
    assert recipe_from_dict({**BASE, "data": data, "eval": {"sets": EVAL["sets"]}}).eval is not None


def test_known_keys_cover_the_suite_and_the_plan() -> None:
    assert {"sets", "task", "forgetting", "batch_size", "n_resamples", "confidence", "latency", "prices"} <= set(
        eval_keys()
    )


def test_full_fine_tuning_is_a_method_without_options() -> None:
    recipe = recipe_from_dict({**BASE, "method": {"type": "full"}})
    assert recipe.full_fine_tune
    with pytest.raises(ConfigError, match="no adapter config"):
        recipe.adapter_config()
    with pytest.raises(ConfigError, match=r"'full'.*takes no options.*\['r'\]"):
        recipe_from_dict({**BASE, "method": {"type": "full", "r": 4}})
    with pytest.raises(ConfigError, match="full"):  # the error for an unknown type lists it
        recipe_from_dict({**BASE, "method": {"type": "fulll"}})
