"""A recipe, run: load the model, inject the adapter (or unfreeze everything for ``method: {type: full}``), build
the data through the data layer, train, leave the run folder complete (adapter/ or model/ with lineage,
checkpoints, metrics.jsonl, train_result.json, recipe.yaml) and, when the recipe has an ``eval:`` section,
evaluate what was saved (RUN/eval.json, eval.md, eval.html). What ``slimtune train recipe.yaml`` calls, in one
process or under torchrun."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from slimtune.errors import ConfigError
from slimtune.train.callbacks import Callback
from slimtune.train.distributed import Strategy, env_from_environment
from slimtune.train.recipe import Recipe, data_eval_sets, is_classifier, load_model, save_resolved
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
    for name, section in data_eval_sets(data.get("eval")).items():
        if report.label_map and "label_map" not in section:
            section = {**section, "label_map": report.label_map}  # the training ids, for every split
        eval_examples, eval_report = build_dataset(_spec(f"eval.{name}", section), tokenizer, max_length, False)
        built.eval[name], built.reports[f"eval/{name}"] = eval_examples, eval_report.as_dict()
    return built


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
    """Train what ``recipe`` says into ``run_dir`` (default: recipe.output_dir); resumes a killed run. With an
    ``eval:`` section, rank 0 then evaluates the saved adapter or model (``TrainResult.evaluation``)."""
    out = Path(run_dir if run_dir is not None else recipe.output_dir)
    model, tokenizer = load_model(recipe.model)
    if tokenizer is None:
        raise ConfigError(f"model {recipe.model.name!r} has no tokenizer files; the data layer needs one")
    data = build_data(recipe.data, tokenizer)
    wanted = len(data.label_map) if data.label_map else None
    if wanted is not None and (not is_classifier(model) or getattr(model.config, "num_labels", None) != wanted):
        model, _ = load_model(recipe.model, num_labels=wanted)
    trainable = _trainable(model, recipe)
    main = env_from_environment()[0] == 0
    if main:
        save_resolved(recipe, out)
    lineage = {"recipe": recipe.to_dict(), "datasets": data.reports, "label_map": data.label_map}
    trainer = Trainer(trainable, recipe.train, data.train, data.collate_fn, eval_data=data.eval or None,
                      run_dir=out, callbacks=callbacks, strategy=strategy, lineage=lineage)
    result = trainer.fit()
    if main and result.model_dir is not None:
        tokenizer.save_pretrained(result.model_dir)  # a full save is a complete transformers model folder
    if main and recipe.eval is not None:
        result.evaluation = evaluate_after_training(out, recipe, result)
    return result


def _trainable(model: Any, recipe: Recipe) -> Any:
    """The model with the recipe's adapter, or (full fine-tuning) the model itself with every weight trainable."""
    if recipe.full_fine_tune:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from slimtune.core.model import adapt

    return adapt(model, recipe.adapter_config())


def evaluate_after_training(run: Path, recipe: Recipe, result: TrainResult) -> dict[str, dict[str, float]]:
    """Evaluate the run as ``slimtune eval RUN`` does; a finished run run again keeps its eval.json when the
    eval section has not changed since."""
    from slimtune.eval.run_eval import EVAL_NAME, evaluate_run
    from slimtune.formats.safe import read_json

    previous = run / EVAL_NAME
    if result.stopped_reason == "already_complete" and previous.is_file():
        kept = read_json(previous)
        if kept.get("plan") == recipe.eval:
            return dict(kept["metrics"])
    report = evaluate_run(run)
    log.info("evaluated %s: %s", run, ", ".join(sorted(report.metrics)))
    return report.metrics
