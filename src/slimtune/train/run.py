"""A recipe, run: load the model, inject the adapter, build the data through the data layer, train, and leave
the run folder complete (adapter with lineage, checkpoints, metrics.jsonl, recipe.yaml). What
``slimtune train recipe.yaml`` calls, in one process or under torchrun."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from slimtune.errors import ConfigError
from slimtune.train.callbacks import Callback
from slimtune.train.distributed import Strategy, env_from_environment
from slimtune.train.recipe import Recipe, load_model, save_resolved
from slimtune.train.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)

DATA_KEYS = ("train", "eval", "max_length", "packing", "pad_to_multiple_of")


@dataclass
class BuiltData:
    """What the data layer made of a recipe's ``data:`` section."""

    train: list[Any]
    collate_fn: Callable[[list[Any]], Any]
    eval: dict[str, list[Any]] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    label_map: dict[str, int] | None = None


def build_data(data: dict[str, Any], tokenizer: Any) -> BuiltData:
    """``{"train": {DataSpec fields}, "eval": {DataSpec fields} | {name: {...}}, "max_length", "packing"}``."""
    from slimtune.data import build_dataset, collator_for

    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        raise ConfigError(f"unknown data option(s) {unknown}; known options: {', '.join(DATA_KEYS)}")
    if not isinstance(data.get("train"), dict):
        raise ConfigError(f"data.train must be a mapping with at least a path, got {data.get('train')!r}")
    max_length, packing = int(data.get("max_length", 256)), bool(data.get("packing", False))
    examples, report = build_dataset(_spec("train", data["train"]), tokenizer, max_length, packing)
    built = BuiltData(train=examples, collate_fn=collator_for(report, tokenizer, data.get("pad_to_multiple_of")),
                      reports={"train": report.as_dict()}, label_map=report.label_map)
    for name, section in _eval_sections(data.get("eval")).items():
        if report.label_map and "label_map" not in section:
            section = {**section, "label_map": report.label_map}  # the training ids, for every split
        eval_examples, eval_report = build_dataset(_spec(f"eval.{name}", section), tokenizer, max_length, False)
        built.eval[name], built.reports[f"eval/{name}"] = eval_examples, eval_report.as_dict()
    return built


def _eval_sections(section: Any) -> dict[str, dict[str, Any]]:
    if section is None:
        return {}
    if isinstance(section, dict) and "path" in section:
        return {"eval": dict(section)}
    if isinstance(section, dict) and all(isinstance(v, dict) for v in section.values()):
        return {str(k): dict(v) for k, v in section.items()}
    raise ConfigError(f"data.eval must be one data spec (with a path) or {{name: spec}}, got {section!r}")


def _spec(where: str, section: dict[str, Any]) -> Any:
    from slimtune.data import DataSpec

    known = [f.name for f in fields(DataSpec)]
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ConfigError(f"unknown data.{where} option(s) {unknown}; known options: {', '.join(known)}")
    try:
        return DataSpec(**section)
    except TypeError as exc:
        raise ConfigError(f"data.{where}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"data.{where}: {exc}") from exc


def run_recipe(recipe: Recipe, run_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
               strategy: Strategy = "ddp") -> TrainResult:
    """Train what ``recipe`` says into ``run_dir`` (default: recipe.output_dir); resumes a killed run."""
    from slimtune.core.model import adapt

    out = Path(run_dir if run_dir is not None else recipe.output_dir)
    model, tokenizer = load_model(recipe.model)
    if tokenizer is None:
        raise ConfigError(f"model {recipe.model.name!r} has no tokenizer files; the data layer needs one")
    data = build_data(recipe.data, tokenizer)
    if data.label_map and getattr(getattr(model, "config", None), "num_labels", None) != len(data.label_map):
        model, _ = load_model(recipe.model, num_labels=len(data.label_map))
    adapted = adapt(model, recipe.adapter_config())
    if env_from_environment()[0] == 0:
        save_resolved(recipe, out)
    lineage = {"recipe": recipe.to_dict(), "datasets": data.reports, "label_map": data.label_map}
    trainer = Trainer(adapted, recipe.train, data.train, data.collate_fn, eval_data=data.eval or None, run_dir=out,
                      callbacks=callbacks, strategy=strategy, lineage=lineage)
    return trainer.fit()
