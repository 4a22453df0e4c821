"""``slimtune eval RUN|ADAPTER|MODEL``: load what a run saved (an adapter onto its base model, or the whole
fine-tuned model of a full fine-tuning run), run the recipe's evaluation plan (``eval:``, see
slimtune.eval.plan), add the efficiency report (parameters, saved size, training tokens, time, memory, FLOPs,
cost, latency) and write RUN/eval.json (top-level "metrics": {set: {metric: value}}, what promotion gates
read), eval.md and eval.html."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from slimtune.errors import ConfigError, FingerprintMismatchError
from slimtune.eval.efficiency import (
    LatencyConfig,
    PriceTable,
    TrainingCost,
    benchmark_latency,
    directory_bytes,
    efficiency_summary,
    training_cost_from_run,
)
from slimtune.eval.plan import DEFAULT_LATENCY, eval_plan
from slimtune.eval.suites import run_suite
from slimtune.formats.safe import atomic_file, read_json, write_json

log = logging.getLogger(__name__)

EVAL_NAME = "eval.json"
LINEAGE = "slimtune.json"
__all__ = ["DEFAULT_LATENCY", "EVAL_NAME", "EvalReport", "Saved", "evaluate_run", "locate", "write_eval_reports"]


@dataclass
class EvalReport:
    """What ``evaluate_run`` measured; ``metrics`` is {set_name: {metric: value}}."""

    metrics: dict[str, dict[str, float]]
    suite: dict[str, Any]
    efficiency: dict[str, Any]
    latency: dict[str, Any] | None
    source: dict[str, str]
    plan: dict[str, Any] | None = None
    """The recipe's eval: section this report followed; None when arguments overrode part of it."""
    paths: dict[str, Path] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "suite": self.suite, "efficiency": self.efficiency,
                "latency": self.latency, "source": self.source, "plan": self.plan}


@dataclass(frozen=True)
class Saved:
    """What a run saved: an adapter folder (PEFT layout) or a whole model (transformers layout)."""

    kind: Literal["adapter", "model"]
    folder: Path
    run: Path | None
    """The run folder (with recipe.yaml), when there is one."""


def _is_full_model(folder: Path) -> bool:
    if not (folder / "config.json").is_file() or not (folder / LINEAGE).is_file():
        return False
    return bool(read_json(folder / LINEAGE).get("saved") == "full_model")


def _run_of(folder: Path) -> Path | None:
    return folder.parent if (folder.parent / "recipe.yaml").is_file() else None


def locate(path: str | Path) -> Saved:
    """What RUN (with adapter/ or model/), ADAPTER (adapter_config.json) or MODEL (a full save) holds."""
    given = Path(path)
    if (given / "adapter_config.json").is_file():
        return Saved("adapter", given, _run_of(given))
    if _is_full_model(given):
        return Saved("model", given, _run_of(given))
    if (given / "adapter" / "adapter_config.json").is_file():
        return Saved("adapter", given / "adapter", given)
    if _is_full_model(given / "model"):
        return Saved("model", given / "model", given)
    raise ConfigError(f"{given} is neither a run folder (with adapter/adapter_config.json, or model/ from full "
                      "fine-tuning), an adapter folder (with adapter_config.json) nor a fine-tuned model folder "
                      "(config.json with slimtune.json)")


def recipe_of(saved: Saved) -> dict[str, Any]:
    """The run's recipe mapping: RUN/recipe.yaml, else the saved folder's lineage (slimtune.json "recipe")."""
    if saved.run is not None:
        data = yaml.safe_load((saved.run / "recipe.yaml").read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    lineage = _lineage(saved.folder)
    recipe = lineage.get("recipe")
    if not isinstance(recipe, dict):
        raise ConfigError(f"{saved.folder} has no recipe (no RUN/recipe.yaml, no 'recipe' in slimtune.json); "
                          "evaluate it from its run folder")
    return recipe


def _lineage(folder: Path) -> dict[str, Any]:
    return read_json(folder / LINEAGE) if (folder / LINEAGE).is_file() else {}


def load_for_eval(adapter: Path, recipe: dict[str, Any]) -> tuple[Any, Any, dict[str, int] | None, str]:
    """(adapted model, tokenizer, label map, fingerprint note) for the recipe's base and the adapter."""
    from slimtune.formats.peft import load_adapter
    from slimtune.train.recipe import ModelSpec, load_model

    label_map = _lineage(adapter).get("label_map")
    num_labels = len(label_map) if label_map else None
    base, tokenizer = load_model(ModelSpec(**recipe["model"]), num_labels=num_labels)
    try:
        return load_adapter(base, adapter), tokenizer, label_map, "verified"
    except FingerprintMismatchError:
        config = read_json(adapter / "adapter_config.json")
        if num_labels is None or not config.get("modules_to_save"):
            raise
    # a classifier's fresh head is random at load, so the base fingerprint differs; the adapter carries the head
    base, tokenizer = load_model(ModelSpec(**recipe["model"]), num_labels=num_labels)
    log.warning("base fingerprint differs only by a freshly initialised head; the adapter's saved head is used")
    note = "not verified: the base has a freshly initialised head, replaced by the adapter's modules_to_save"
    return load_adapter(base, adapter, check_fingerprint=False), tokenizer, label_map, note


def load_full_for_eval(folder: Path, recipe: dict[str, Any]) -> tuple[Any, Any, dict[str, int] | None]:
    """(fine-tuned model, tokenizer, label map) of a full fine-tuning save (the tokenizer saved beside it, else
    the recipe's base model's)."""
    from slimtune.train.recipe import ModelSpec, load_model, load_tokenizer

    dtype = dict(recipe.get("model") or {}).get("dtype", "float32")
    model, tokenizer = load_model(ModelSpec(name=str(folder), dtype=dtype))
    if tokenizer is None:
        tokenizer = load_tokenizer(ModelSpec(**recipe["model"]))
    return model, tokenizer, _lineage(folder).get("label_map")


def _forgetting_base(saved: Saved, recipe: dict[str, Any], model: Any, wanted: bool) -> Any:
    """The untuned base beside a fully fine-tuned causal LM (the forgetting check compares the two)."""
    if saved.kind != "model" or not wanted or not type(model).__name__.endswith("ForCausalLM"):
        return None
    from slimtune.train.recipe import ModelSpec, load_model

    return load_model(ModelSpec(**recipe["model"]))[0]


def evaluate_run(run_or_saved_dir: str | Path, *, suite: dict[str, Any] | None = None,
                 prices: PriceTable | dict[str, Any] | None = None,
                 latency: LatencyConfig | bool | None = True, out_dir: str | Path | None = None,
                 write: bool = True) -> EvalReport:
    """Evaluate a finished run, an adapter folder or a fully fine-tuned model folder (with its recipe in the
    lineage when there is no run folder around it).

    ``suite`` replaces the suite keys of the recipe's ``eval:`` section; ``prices`` its price table;
    ``latency``: True uses the section's latency benchmark (default DEFAULT_LATENCY), None skips it, a
    LatencyConfig replaces it. Writes eval.json/.md/.html into ``out_dir`` (default: the run folder, else
    the saved folder) unless ``write=False``."""
    saved = locate(run_or_saved_dir)
    recipe = recipe_of(saved)
    plan = eval_plan(recipe, suite=suite, latency=latency, prices=prices)
    if saved.kind == "model":
        model, tokenizer, label_map = load_full_for_eval(saved.folder, recipe)
        fingerprint = "full model: the whole fine-tuned model was saved, no base to verify against"
    else:
        model, tokenizer, label_map, fingerprint = load_for_eval(saved.folder, recipe)
    base = _forgetting_base(saved, recipe, model, plan.suite.forgetting is not None)
    scored = run_suite(plan.suite, model, tokenizer, label_map=label_map, base_model=base)
    training = training_cost_from_run(saved.run) if saved.run is not None else TrainingCost()
    efficiency = efficiency_summary(model, training, plan.prices, full=saved.kind == "model",
                                    adapter_bytes=directory_bytes(saved.folder))
    timed = benchmark_latency(model, plan.latency) if plan.latency is not None else None
    source = {"kind": saved.kind, saved.kind: str(saved.folder), "run": str(saved.run) if saved.run else "",
              "fingerprint": fingerprint}
    followed = recipe.get("eval") if suite is None and latency is True and prices is None else None
    report = EvalReport(scored.metrics(), scored.as_dict(), efficiency, timed, source, followed)
    if write:
        report.paths = write_eval_reports(report, Path(out_dir) if out_dir else (saved.run or saved.folder))
    return report


def write_eval_reports(report: EvalReport, out: Path) -> dict[str, Path]:
    from slimtune.eval.report import eval_html, eval_markdown

    paths = {"json": out / EVAL_NAME, "md": out / "eval.md", "html": out / "eval.html"}
    write_json(paths["json"], report.as_dict())
    with atomic_file(paths["md"], "w") as f:
        f.write(eval_markdown(report))
    with atomic_file(paths["html"], "w") as f:
        f.write(eval_html(report))
    return paths
