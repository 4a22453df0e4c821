"""The promotion gate: may a candidate version replace the one an alias points at?

Three rules: no metric regresses beyond a tolerance on the evaluation sets both versions were measured on
(higher is better unless the metric name matches a lower-is-better pattern), no governance scan of the
candidate says blocked or failed, and both versions were trained on the same base model (fingerprint).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from typing import Any

from slimtune.errors import ConfigError, PolicyError

DEFAULT_LOWER_IS_BETTER: tuple[str, ...] = (
    "loss",
    "*_loss",
    "loss_*",
    "nll",
    "*_nll",
    "perplexity",
    "*perplexity*",
    "ppl",
    "*_ppl",
    "*latency*",
    "*_ms",
    "*_seconds",
    "wer",
    "cer",
    "error*",
    "*_error",
    "*error_rate*",
    "memory*",
    "*_memory",
    "*_gib",
    "*_mib",
    "cost*",
    "*_cost",
    "ece",
    "forgetting*",
    "toxicity*",
)
BAD_SCAN_STATUSES = frozenset({"blocked", "block", "failed", "fail", "error", "rejected", "refused"})


@dataclass(frozen=True)
class PromotionPolicy:
    """How strict ``promote`` is. The defaults allow no regression at all."""

    tolerance_abs: float = 0.0
    """Allowed regression in the metric's own units (e.g. 0.005 accuracy)."""
    tolerance_rel: float = 0.0
    """Allowed regression as a fraction of the current value (0.01 = 1 %); the larger tolerance applies."""
    lower_is_better: tuple[str, ...] = DEFAULT_LOWER_IS_BETTER
    """fnmatch patterns (lower-case) of metric names where smaller is better; all others: higher is better."""
    metrics: tuple[str, ...] | None = None
    """If set, only metric names matching one of these patterns are compared."""
    require_shared_metrics: bool = True
    """Refuse when the alias has a current version and no (eval set, metric) pair is shared with it."""
    check_governance: bool = True
    """Refuse when a scan recorded for the candidate says blocked or failed."""
    require_scans: bool = False
    """Also refuse a candidate that has no scan results at all."""
    check_base: bool = True
    """Refuse when candidate and current version differ in base model fingerprint (or either lacks one)."""

    def __post_init__(self) -> None:
        for name in ("tolerance_abs", "tolerance_rel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"PromotionPolicy.{name} must be a finite number >= 0, got {value!r}")

    def is_lower_better(self, metric: str) -> bool:
        """True if smaller values of this metric are better."""
        low = metric.lower()
        return any(fnmatch(low, pattern) for pattern in self.lower_is_better)

    def allowed_regression(self, current: float) -> float:
        """How far the candidate may fall behind ``current``."""
        return max(self.tolerance_abs, self.tolerance_rel * abs(current))

    def selects(self, metric: str) -> bool:
        """True if the gate compares this metric."""
        return self.metrics is None or any(fnmatch(metric.lower(), p.lower()) for p in self.metrics)


@dataclass(frozen=True)
class RuleFailure:
    """One rule the candidate broke."""

    rule: str
    """'metrics', 'shared-metrics', 'governance' or 'base-model'."""
    message: str


@dataclass(frozen=True)
class Comparison:
    """One metric of one evaluation set, candidate against current."""

    eval_set: str
    metric: str
    candidate: float | None
    current: float | None
    lower_is_better: bool
    allowed: float
    ok: bool


@dataclass(frozen=True)
class GateResult:
    """What the gate decided, and why."""

    failures: tuple[RuleFailure, ...] = ()
    comparisons: tuple[Comparison, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": [asdict(f) for f in self.failures],
            "comparisons": [asdict(c) for c in self.comparisons],
        }


class PromotionRefused(PolicyError):
    """The promotion gate refused; ``failures`` lists each broken rule."""

    def __init__(self, message: str, result: GateResult) -> None:
        super().__init__(message)
        self.result = result
        self.failures = result.failures


def compare_metrics(policy: PromotionPolicy, candidate: dict[str, Any], current: dict[str, Any]) -> list[Comparison]:
    """Comparisons on every (eval set, metric) that both manifests carry."""
    out: list[Comparison] = []
    cand_metrics, cur_metrics = candidate.get("metrics") or {}, current.get("metrics") or {}
    for eval_set in sorted(set(cand_metrics) & set(cur_metrics)):
        for metric in sorted(set(cand_metrics[eval_set]) & set(cur_metrics[eval_set])):
            if not policy.selects(metric):
                continue
            cand, cur = cand_metrics[eval_set][metric], cur_metrics[eval_set][metric]
            lower = policy.is_lower_better(metric)
            allowed = policy.allowed_regression(cur) if cur is not None else 0.0
            if cand is None:
                ok = False
            elif cur is None:
                ok = True  # nothing finite to regress from
            else:
                ok = cand <= cur + allowed if lower else cand >= cur - allowed
            out.append(Comparison(eval_set, metric, cand, cur, lower, allowed, ok))
    return out


def scan_problems(scans: Any, path: str = "scans") -> list[str]:
    """Every place in a scan result that says blocked or failed (status, passed=false, blocked=true)."""
    problems: list[str] = []
    if isinstance(scans, str):
        if scans.strip().lower() in BAD_SCAN_STATUSES:
            problems.append(f"{path} = {scans!r}")
    elif isinstance(scans, dict):
        for key, value in scans.items():
            low = str(key).lower()
            if (low in ("passed", "ok") and value is False) or (low == "blocked" and value is True):
                problems.append(f"{path}.{key} = {value}")
            else:
                problems.extend(scan_problems(value, f"{path}.{key}"))
    elif isinstance(scans, list):
        for i, value in enumerate(scans):
            problems.extend(scan_problems(value, f"{path}[{i}]"))
    return problems


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"


def _metric_failures(
    policy: PromotionPolicy, candidate: dict[str, Any], current: dict[str, Any], current_ref: str
) -> tuple[list[RuleFailure], list[Comparison]]:
    comparisons = compare_metrics(policy, candidate, current)
    failures = [
        RuleFailure(
            "metrics",
            f"{c.eval_set}/{c.metric}: {_fmt(c.current)} ({current_ref}) -> {_fmt(c.candidate)}; "
            f"{'lower' if c.lower_is_better else 'higher'} is better, allowed regression {c.allowed:.6g}",
        )
        for c in comparisons
        if not c.ok
    ]
    if policy.require_shared_metrics and not comparisons:
        failures.append(
            RuleFailure(
                "shared-metrics",
                f"no evaluation set and metric in common with {current_ref} (candidate: "
                f"{_set_summary(candidate)}; current: {_set_summary(current)}); evaluate on those sets",
            )
        )
    return failures, comparisons


def _set_summary(manifest: dict[str, Any]) -> str:
    metrics = manifest.get("metrics") or {}
    return ", ".join(f"{s}[{', '.join(sorted(m))}]" for s, m in sorted(metrics.items())) or "none"


def _base_failures(candidate: dict[str, Any], current: dict[str, Any]) -> list[RuleFailure]:
    cand_fp, cur_fp = candidate.get("base_fingerprint"), current.get("base_fingerprint")
    if cand_fp and cur_fp and cand_fp == cur_fp:
        return []
    cand_base, cur_base = candidate.get("base_model"), current.get("base_model")
    return [
        RuleFailure(
            "base-model",
            f"base model differs: candidate {cand_base!r} (fingerprint {cand_fp!r}), "
            f"current {cur_base!r} (fingerprint {cur_fp!r})",
        )
    ]


def evaluate(
    policy: PromotionPolicy,
    candidate: dict[str, Any],
    current: dict[str, Any] | None,
    current_ref: str | None = None,
) -> GateResult:
    """Apply the policy; ``current`` is the manifest the alias points at now (None: first promotion)."""
    failures: list[RuleFailure] = []
    comparisons: list[Comparison] = []
    if current is not None:
        metric_failures, comparisons = _metric_failures(policy, candidate, current, current_ref or "current")
        failures.extend(metric_failures)
        if policy.check_base:
            failures.extend(_base_failures(candidate, current))
    if policy.check_governance:
        scans = candidate.get("scans") or {}
        failures.extend(RuleFailure("governance", f"scan says blocked/failed: {p}") for p in scan_problems(scans))
        if policy.require_scans and not scans:
            failures.append(RuleFailure("governance", "the candidate has no scan results (require_scans=True)"))
    return GateResult(tuple(failures), tuple(comparisons))
