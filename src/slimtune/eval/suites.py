"""Evaluation suites declared in a recipe's ``eval:`` section: in-distribution and out-of-distribution sets
with per-set metrics and bootstrap intervals, the generalisation gap (ID minus OOD, with an interval), and a
forgetting check (the base's and the adapted model's perplexity on general text neither was tuned on).

    eval:
      task: classification            # classification | lm | generation (default: from the data schema)
      sets:
        test: {path: builtin:rotten_tomatoes, split: test}
        ood:  {path: builtin:chatterbot, split: ood, kind: ood}
      forgetting: {path: builtin:hamlet, max_rows: 40}    # causal LMs; false turns it off
      n_resamples: 1000
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
from torch import nn

from slimtune.errors import ConfigError
from slimtune.eval import metrics as mt
from slimtune.eval.bootstrap import bootstrap_ci, two_sample_bootstrap
from slimtune.eval.predict import classify, generate_answers, lm_example_losses

log = logging.getLogger(__name__)

Task = Literal["classification", "lm", "generation"]
TASKS: tuple[str, ...] = ("classification", "lm", "generation")
#: the metric the generalisation gap is reported on, per task
PRIMARY: dict[str, str] = {"classification": "accuracy", "lm": "loss", "generation": "token_f1"}
#: per-example scores kept in eval.json, so that two runs can be compared on the same examples later
SCORES: tuple[str, ...] = ("accuracy", "loss", "weights", "exact_match", "token_f1", "rouge_l")
DEFAULT_FORGETTING: dict[str, Any] = {"path": "builtin:hamlet", "max_rows": 40}
_SCHEMA_TASK = {"classification": "classification", "qa": "generation", "prompt_completion": "generation"}


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: a data spec (DataSpec's fields) and whether it is in or out of distribution."""

    name: str
    data: dict[str, Any]
    """DataSpec fields: path, split, schema, max_rows, ..."""
    kind: Literal["id", "ood"] = "id"


@dataclass(frozen=True)
class SuiteConfig:
    """A recipe's ``eval:`` section, validated."""

    sets: tuple[EvalSet, ...] = ()
    task: Task | None = None
    """None: from the first set's schema (classification, qa/prompt_completion -> generation, else lm)."""
    forgetting: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_FORGETTING))
    """Data spec of the general text for the forgetting check (causal LMs only); None turns it off."""
    batch_size: int = 16
    max_length: int = 256
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    max_new_tokens: int = 32

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, default_sets: dict[str, dict[str, Any]] | None = None,
                  max_length: int | None = None) -> SuiteConfig:
        """From ``eval:`` (None: the recipe's ``data.eval`` sets as in-distribution sets)."""
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown eval option(s) {unknown}; known options: {', '.join(sorted(known))}")
        sets_raw = raw.pop("sets", None) or default_sets or {}
        if not isinstance(sets_raw, dict):
            raise ConfigError(f"eval.sets must be a mapping {{name: data spec}}, got {sets_raw!r}")
        forgetting = raw.pop("forgetting", DEFAULT_FORGETTING)
        if max_length is not None:
            raw.setdefault("max_length", max_length)
        config = cls(sets=tuple(_eval_set(n, s) for n, s in sets_raw.items()),
                     forgetting=forgetting or None, **raw)
        config.validate()
        return config

    def validate(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"eval.task must be one of {', '.join(TASKS)}; got {self.task!r}")
        for name in ("batch_size", "max_length", "n_resamples", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"eval.{name} must be a positive integer, got {value!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"eval.confidence must be in (0, 1), got {self.confidence!r}")


def _eval_set(name: str, spec: Any) -> EvalSet:
    if not isinstance(spec, dict) or "path" not in spec:
        raise ConfigError(f"eval.sets.{name} must be a data spec with a path, got {spec!r}")
    from slimtune.data import DataSpec

    data = {k: v for k, v in spec.items() if k != "kind"}
    known = [f.name for f in fields(DataSpec)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown eval.sets.{name} option(s) {unknown}; known options: kind, {', '.join(known)}")
    kind = spec.get("kind", "id")
    if kind not in ("id", "ood"):
        raise ConfigError(f"eval.sets.{name}.kind must be 'id' or 'ood', got {kind!r}")
    return EvalSet(str(name), data, kind)


@dataclass
class SetResult:
    """One set's metrics, intervals and the per-example scores behind them (kept for paired comparisons)."""

    metrics: dict[str, float]
    intervals: dict[str, dict[str, float]] = field(default_factory=dict)
    per_example: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteResult:
    task: str
    sets: dict[str, SetResult] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    forgetting: dict[str, Any] | None = None

    def metrics(self) -> dict[str, dict[str, float]]:
        """{set_name: {metric: value}}: what RUN/eval.json's "metrics" holds (promotion gates read it)."""
        out = {name: dict(r.metrics) for name, r in self.sets.items()}
        if self.forgetting and "metrics" in self.forgetting:
            out[f"forgetting/{self.forgetting['set']}"] = dict(self.forgetting["metrics"])
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metrics": self.metrics(), "kinds": dict(self.kinds),
                "intervals": {n: r.intervals for n, r in self.sets.items()},
                "extra": {n: r.extra for n, r in self.sets.items() if r.extra}, "gaps": self.gaps,
                "forgetting": self.forgetting,
                "per_example": {n: {k: [float(x) for x in v] for k, v in r.per_example.items()
                                    if k in SCORES} for n, r in self.sets.items()}}


def _ci(config: SuiteConfig, values: np.ndarray, **kw: Any) -> dict[str, float]:
    return bootstrap_ci(values, n_resamples=config.n_resamples, confidence=config.confidence, seed=config.seed,
                        **kw).as_dict()


def score_classification(config: SuiteConfig, model: nn.Module, data: list[Any], collate: Any,
                         num_classes: int | None) -> SetResult:
    preds, labels, losses = classify(model, data, collate, config.batch_size)
    correct = (preds == labels).astype(np.float64)
    cm = mt.confusion_matrix(preds, labels, num_classes)

    def f1_stat(idx: np.ndarray) -> np.ndarray:
        return np.array([mt.macro_f1(preds[row], labels[row], cm.shape[0]) for row in idx])

    result = SetResult({"accuracy": float(correct.mean()), "macro_f1": mt.macro_f1_from_confusion(cm),
                        "loss": float(losses.mean()), "n": float(len(labels))},
                       per_example={"accuracy": correct, "loss": losses, "preds": preds, "labels": labels},
                       extra={"confusion_matrix": cm.tolist()})
    result.intervals = {"accuracy": _ci(config, correct), "loss": _ci(config, losses),
                        "macro_f1": _ci(config, correct, statistic=f1_stat)}
    return result


def score_lm(config: SuiteConfig, model: nn.Module, data: list[Any], collate: Any) -> SetResult:
    sums, counts = lm_example_losses(model, data, collate, config.batch_size)
    loss = mt.token_weighted_loss(sums, counts)
    ci = _ci(config, sums, weights=counts)
    ppl_ci = {**ci, "estimate": mt.perplexity(ci["estimate"]), "low": mt.perplexity(ci["low"]),
              "high": mt.perplexity(ci["high"])}
    return SetResult({"loss": loss, "perplexity": mt.perplexity(loss), "tokens": float(counts.sum()),
                      "n": float(len(counts))}, intervals={"loss": ci, "perplexity": ppl_ci},
                     per_example={"loss": sums, "weights": counts})


def score_generation(config: SuiteConfig, model: nn.Module, tokenizer: Any, data: list[Any],
                     collate: Any) -> SetResult:
    predictions, references = generate_answers(model, tokenizer, data, config.batch_size, config.max_new_tokens)
    scores = mt.generation_scores(predictions, references)
    lm = score_lm(config, model, data, collate)
    result = SetResult({k: float(v.mean()) for k, v in scores.items()}, per_example=dict(scores),
                       extra={"samples": [{"prediction": p, "reference": r}
                                          for p, r in list(zip(predictions, references, strict=True))[:5]]})
    result.metrics.update({"loss": lm.metrics["loss"], "perplexity": lm.metrics["perplexity"],
                           "n": float(len(references))})
    result.intervals = {k: _ci(config, v) for k, v in scores.items()} | lm.intervals
    return result


@contextmanager
def _base_of(model: nn.Module) -> Iterator[None]:
    """The base model's behaviour within the block (adapters disabled); a plain model has no base inside."""
    disabled: Callable[[], Any] | None = getattr(model, "disabled", None)
    if disabled is None:
        raise ConfigError("the forgetting check needs the base: pass base_model= or an AdaptedModel")
    with disabled():
        yield


def infer_task(schema: str, config: SuiteConfig) -> str:
    return config.task or _SCHEMA_TASK.get(schema, "lm")


def _build(spec: dict[str, Any], tokenizer: Any, max_length: int,
           label_map: dict[str, int] | None) -> tuple[list[Any], Any, Any]:
    from slimtune.data import DataSpec, build_dataset, collator_for

    if label_map and "label_map" not in spec:
        spec = {**spec, "label_map": label_map}
    try:
        data_spec = DataSpec(**spec)
    except TypeError as exc:
        raise ConfigError(f"eval set {spec!r}: {exc}") from exc
    examples, report = build_dataset(data_spec, tokenizer, max_length)
    return examples, report, collator_for(report, tokenizer)


def score_set(config: SuiteConfig, model: nn.Module, tokenizer: Any, eval_set: EvalSet,
              label_map: dict[str, int] | None = None) -> tuple[str, SetResult]:
    """(task, result) of one set."""
    data, report, collate = _build(eval_set.data, tokenizer, config.max_length, label_map)
    task = infer_task(report.schema, config)
    log.info("eval set %s: %d examples, task %s", eval_set.name, len(data), task)
    if task == "classification":
        classes = len(report.label_map) if report.label_map else None
        return task, score_classification(config, model, data, collate, classes)
    if task == "generation":
        return task, score_generation(config, model, tokenizer, data, collate)
    return task, score_lm(config, model, data, collate)


def generalisation_gaps(config: SuiteConfig, result: SuiteResult) -> dict[str, dict[str, float]]:
    """For each (first ID set, OOD set): the primary metric ID minus OOD with a two-sample interval."""
    ids = [n for n, k in result.kinds.items() if k == "id"]
    oods = [n for n, k in result.kinds.items() if k == "ood"]
    if not ids or not oods:
        return {}
    metric, ref = PRIMARY[result.task], result.sets[ids[0]]
    out: dict[str, dict[str, float]] = {}
    for name in oods:
        other = result.sets[name]
        ci = two_sample_bootstrap(ref.per_example[metric], other.per_example[metric],
                                  weights_a=ref.per_example.get("weights"), weights_b=other.per_example.get("weights"),
                                  n_resamples=config.n_resamples, confidence=config.confidence, seed=config.seed)
        out[f"{ids[0]}-{name}"] = {"metric": metric, **ci.as_dict()}  # type: ignore[dict-item]
    return out


def forgetting_check(config: SuiteConfig, model: nn.Module, tokenizer: Any,
                     base_model: nn.Module | None = None) -> dict[str, Any]:
    """Perplexity on general text before (the base) and after (the adapted model), and the paired change."""
    spec = dict(config.forgetting or {})
    data, _, collate = _build(spec, tokenizer, config.max_length, None)
    after_sums, counts = lm_example_losses(model, data, collate, config.batch_size)
    with _base_of(model) if base_model is None else nullcontext():
        before_sums, _ = lm_example_losses(base_model or model, data, collate, config.batch_size)

    def delta(idx: np.ndarray) -> np.ndarray:  # token-weighted loss after minus before, same documents
        return (after_sums[idx].sum(axis=1) - before_sums[idx].sum(axis=1)) / counts[idx].sum(axis=1)

    change = bootstrap_ci(after_sums, statistic=delta, n_resamples=config.n_resamples,
                          confidence=config.confidence, seed=config.seed)
    before, after = mt.token_weighted_loss(before_sums, counts), mt.token_weighted_loss(after_sums, counts)
    name = str(spec.get("path", "general")).removeprefix("builtin:")
    return {"set": name, "metrics": {"perplexity_base": mt.perplexity(before), "perplexity": mt.perplexity(after),
                                     "loss_base": before, "loss": after, "loss_delta": after - before,
                                     "perplexity_ratio": mt.perplexity(after) / mt.perplexity(before),
                                     "tokens": float(counts.sum())},
            "loss_delta_interval": change.as_dict()}


def _has_lm_head(model: nn.Module) -> bool:
    inner: Any = getattr(model, "model", model)
    return type(inner).__name__.endswith("ForCausalLM") and inner.get_output_embeddings() is not None


def run_suite(config: SuiteConfig, model: nn.Module, tokenizer: Any, *, label_map: dict[str, int] | None = None,
              base_model: nn.Module | None = None) -> SuiteResult:
    """Score every set, the gaps and (for causal LMs with a forgetting spec) the forgetting check."""
    if not config.sets:
        raise ConfigError("the eval suite has no sets; give eval.sets or data.eval in the recipe")
    tasks: set[str] = set()
    result = SuiteResult(task="")
    for eval_set in config.sets:
        task, scored = score_set(config, model, tokenizer, eval_set, label_map)
        tasks.add(task)
        result.sets[eval_set.name], result.kinds[eval_set.name] = scored, eval_set.kind
    if len(tasks) > 1:
        raise ConfigError(f"eval sets mix tasks {sorted(tasks)}; set eval.task or give sets of one schema")
    result.task = tasks.pop()
    result.gaps = generalisation_gaps(config, result)
    if config.forgetting and _has_lm_head(model):
        result.forgetting = forgetting_check(config, model, tokenizer, base_model)
    elif config.forgetting:
        result.forgetting = {"skipped": f"{type(getattr(model, 'model', model)).__name__} is not a causal LM; "
                                        "perplexity on general text does not apply"}
    return result


def compare_runs(a: dict[str, Any], b: dict[str, Any], set_name: str, metric: str, *, n_resamples: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of B minus A on one set's per-example scores, from two eval.json "suite" sections
    (or SuiteResult.as_dict()) of runs scored on the same examples."""
    from slimtune.eval.bootstrap import paired_bootstrap

    try:
        left, right = a["per_example"][set_name][metric], b["per_example"][set_name][metric]
    except KeyError as exc:
        raise ConfigError(f"no per-example {metric!r} scores for set {set_name!r} in both results "
                          f"(sets: {sorted(a.get('per_example', {}))})") from exc
    return paired_bootstrap(left, right, n_resamples=n_resamples, seed=seed).as_dict()
