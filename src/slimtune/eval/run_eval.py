"""``slimtune eval RUN|ADAPTER``: load the run's base model and adapter, run the recipe's evaluation suite,
add the efficiency report (parameters, adapter size, training tokens, time, memory, FLOPs, cost, latency)
and write RUN/eval.json (top-level "metrics": {set: {metric: value}}, what promotion gates read), eval.md
and eval.html."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from slimtune.eval.suites import SuiteConfig, run_suite
from slimtune.formats.safe import atomic_file, read_json, write_json

log = logging.getLogger(__name__)

EVAL_NAME = "eval.json"
DEFAULT_LATENCY = LatencyConfig()


@dataclass
class EvalReport:
    """What ``evaluate_run`` measured; ``metrics`` is {set_name: {metric: value}}."""

    metrics: dict[str, dict[str, float]]
    suite: dict[str, Any]
    efficiency: dict[str, Any]
    latency: dict[str, Any] | None
    source: dict[str, str]
    paths: dict[str, Path] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "suite": self.suite, "efficiency": self.efficiency,
                "latency": self.latency, "source": self.source}


def locate(path: str | Path) -> tuple[Path, Path | None]:
    """(adapter dir, run dir or None) for a RUN folder (with adapter/) or an ADAPTER folder."""
    given = Path(path)
    if (given / "adapter_config.json").is_file():
        parent = given.parent
        return given, parent if (parent / "recipe.yaml").is_file() else None
    if (given / "adapter" / "adapter_config.json").is_file():
        return given / "adapter", given
    raise ConfigError(f"{given} is neither a run folder (with adapter/adapter_config.json) nor an adapter folder "
                      "(with adapter_config.json); full fine-tuning runs are not evaluated from disk yet")


def recipe_of(adapter: Path, run: Path | None) -> dict[str, Any]:
    """The run's recipe mapping: RUN/recipe.yaml, else the adapter's lineage (slimtune.json "recipe")."""
    if run is not None:
        data = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    lineage = read_json(adapter / "slimtune.json") if (adapter / "slimtune.json").is_file() else {}
    recipe = lineage.get("recipe")
    if not isinstance(recipe, dict):
        raise ConfigError(f"{adapter} has no recipe (no RUN/recipe.yaml, no 'recipe' in slimtune.json); "
                          "evaluate it from its run folder")
    return recipe


def load_for_eval(adapter: Path, recipe: dict[str, Any]) -> tuple[Any, Any, dict[str, int] | None, str]:
    """(adapted model, tokenizer, label map, fingerprint note) for the recipe's base and the adapter."""
    from slimtune.formats.peft import load_adapter
    from slimtune.train.recipe import ModelSpec, load_model

    lineage = read_json(adapter / "slimtune.json") if (adapter / "slimtune.json").is_file() else {}
    label_map = lineage.get("label_map")
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


def _suite_config(recipe: dict[str, Any], suite: dict[str, Any] | None) -> SuiteConfig:
    data = recipe.get("data") or {}
    section = data.get("eval")
    if isinstance(section, dict) and "path" in section:
        defaults = {"eval": dict(section)}
    else:
        defaults = {str(k): dict(v) for k, v in dict(section or {}).items()}
    return SuiteConfig.from_dict(suite if suite is not None else recipe.get("eval"), default_sets=defaults,
                                 max_length=int(data.get("max_length", 256)))


def evaluate_run(run_or_adapter_dir: str | Path, *, suite: dict[str, Any] | None = None,
                 prices: PriceTable | dict[str, Any] | None = None,
                 latency: LatencyConfig | None = DEFAULT_LATENCY, out_dir: str | Path | None = None,
                 write: bool = True) -> EvalReport:
    """Evaluate a finished run (or an adapter folder with its recipe in the lineage).

    ``suite`` replaces the recipe's ``eval:`` section; ``prices`` the default price table; ``latency=None``
    skips the latency benchmark. Writes eval.json/.md/.html into ``out_dir`` (default: the run folder, else
    the adapter folder) unless ``write=False``."""
    adapter, run = locate(run_or_adapter_dir)
    recipe = recipe_of(adapter, run)
    config = _suite_config(recipe, suite)
    model, tokenizer, label_map, fingerprint = load_for_eval(adapter, recipe)
    scored = run_suite(config, model, tokenizer, label_map=label_map)
    training = training_cost_from_run(run) if run is not None else TrainingCost()
    table = prices if isinstance(prices, PriceTable) else PriceTable.from_mapping(prices)
    efficiency = efficiency_summary(model, training, table, full=False, adapter_bytes=directory_bytes(adapter))
    timed = benchmark_latency(model, latency) if latency is not None else None
    report = EvalReport(scored.metrics(), scored.as_dict(), efficiency, timed,
                        {"adapter": str(adapter), "run": str(run) if run else "", "fingerprint": fingerprint})
    if write:
        report.paths = write_eval_reports(report, Path(out_dir) if out_dir else (run or adapter))
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
