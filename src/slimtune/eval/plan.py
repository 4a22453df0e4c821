"""A recipe's top-level ``eval:`` section, validated into one plan: the suite (sets, task, forgetting, batch
size, resamples, ...), the latency benchmark and the price table. The one place where a recipe becomes an
evaluation: ``slimtune train`` (after training), ``slimtune eval RUN`` and every ablation cell read it here.

    eval:
      sets:                                  # default: the recipe's data.eval sets, in distribution
        test: {path: builtin:rotten_tomatoes, split: test}
        ood:  {path: data/ood.jsonl, schema: classification, kind: ood}
      forgetting: false                      # or a data spec of general text (causal LMs)
      batch_size: 64
      n_resamples: 1000
      latency: {batch_sizes: [1, 8], seq_len: 64, warmup: 2, repeats: 10}    # false: no latency benchmark
      prices: {cpu: 0.05, currency: EUR}     # per device-hour
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from slimtune.errors import ConfigError
from slimtune.eval.efficiency import LatencyConfig, PriceTable
from slimtune.eval.suites import SuiteConfig
from slimtune.train.recipe import data_eval_sets

DEFAULT_LATENCY = LatencyConfig()
#: eval: keys besides SuiteConfig's fields
PLAN_KEYS: tuple[str, ...] = ("latency", "prices")


def eval_keys() -> list[str]:
    """Every key an ``eval:`` section may hold."""
    return sorted([f.name for f in fields(SuiteConfig)] + list(PLAN_KEYS))


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate after (or apart from) training, and how."""

    suite: SuiteConfig
    """The sets and their metrics."""
    latency: LatencyConfig | None
    """The latency benchmark; None skips it."""
    prices: PriceTable
    """Device-hour prices for the cost estimate."""


def latency_config(spec: Any) -> LatencyConfig | None:
    """``eval.latency``: a mapping of LatencyConfig fields, or false / null for none."""
    if spec is None or spec is False:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"eval.latency must be a mapping of {_latency_keys()} or false, got {spec!r}")
    unknown = sorted(set(spec) - set(_latency_keys()))
    if unknown:
        raise ConfigError(f"unknown eval.latency option(s) {unknown}; known options: {', '.join(_latency_keys())}")
    values = dict(spec)
    if "batch_sizes" in values:
        sizes = values["batch_sizes"]
        values["batch_sizes"] = tuple(sizes) if isinstance(sizes, list | tuple) else (sizes,)
    try:
        return LatencyConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"eval.latency: {exc}") from exc


def _latency_keys() -> list[str]:
    return [f.name for f in fields(LatencyConfig)]


def eval_plan(
    recipe: Mapping[str, Any],
    *,
    suite: Mapping[str, Any] | None = None,
    latency: LatencyConfig | bool | None = True,
    prices: PriceTable | Mapping[str, Any] | None = None,
    require_sets: bool = True,
) -> EvalPlan:
    """The plan of a recipe mapping (its ``eval:`` and ``data:`` sections).

    ``suite`` replaces the ``eval:`` section's suite keys; ``latency``: True keeps the section's (default
    DEFAULT_LATENCY), None or False skips it, a LatencyConfig replaces it; ``prices`` replaces the section's."""
    section = recipe.get("eval")
    if section is not None and not isinstance(section, Mapping):
        raise ConfigError(f"eval must be a mapping with keys among {', '.join(eval_keys())}; got {section!r}")
    section = dict(section or {})
    unknown = sorted(set(section) - set(eval_keys()))
    if unknown:
        raise ConfigError(f"unknown eval option(s) {unknown}; known options: {', '.join(eval_keys())}")
    chosen_latency = latency_config(section["latency"]) if "latency" in section else DEFAULT_LATENCY
    if latency is not True:
        chosen_latency = latency or None
    price_spec = prices if prices is not None else section.get("prices")
    if price_spec is not None and not isinstance(price_spec, PriceTable | Mapping):
        raise ConfigError(
            f"eval.prices must be a mapping {{device: price per hour, currency: ...}}, got {price_spec!r}"
        )
    table = price_spec if isinstance(price_spec, PriceTable) else PriceTable.from_mapping(price_spec)
    suite_raw = dict(suite) if suite is not None else {k: v for k, v in section.items() if k not in PLAN_KEYS}
    data = recipe.get("data") or {}
    config = SuiteConfig.from_dict(
        suite_raw, default_sets=data_eval_sets(data.get("eval")), max_length=int(data.get("max_length", 256))
    )
    if require_sets and not config.sets:
        raise ConfigError("the eval section has no sets: give eval.sets or data.eval in the recipe")
    return EvalPlan(config, chosen_latency, table)
