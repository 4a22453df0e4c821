"""Governance policy: thresholds read from ``governance.yaml``, a check of scan results against them, and
enforcement that stops the action (e.g. ``slimtune train``) unless an override reason is recorded in the
audit log.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from slimtune.errors import ConfigError, PolicyError
from slimtune.governance.audit import AuditLog
from slimtune.governance.licences import Use, normalize_licence

if TYPE_CHECKING:
    from slimtune.governance.scan import ScanReport

OVERRIDE_HINT = ("to go ahead anyway, give an override reason (CLI: --override-reason 'why'; Python: "
                 "enforce(decision, override_reason='why', audit=AuditLog(...))); it is recorded in the audit log")


@dataclass(frozen=True)
class Policy:
    """What a dataset must satisfy before training starts."""

    max_contamination: float = 0.01
    """Largest fraction of any evaluation set that may appear in the training data."""
    blocked_licences: tuple[str, ...] = ()
    """SPDX ids refused whatever the matrix says (e.g. gpl-3.0)."""
    allow_pii: bool = False
    """Whether personal data or secrets in the training data are acceptable."""
    unknown_licence: Literal["warn", "block"] = "warn"
    """What an unknown or missing licence is."""
    intended_use: Use = "commercial"
    """The use the licences are checked for."""
    base_model_licence: str | None = None
    """The base model's licence (SPDX id or hub tag such as 'llama3' or 'other'); None: unknown."""
    licence_warnings_block: bool = False
    """Treat licence warnings as failures (strict mode)."""
    max_trigger_score: float | None = None
    """Fail when a poisoning trigger candidate scores above this (0-1); None: report only."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_contamination <= 1.0:
            raise ConfigError(f"policy max_contamination={self.max_contamination!r}: expected a fraction in [0, 1]")
        if self.unknown_licence not in ("warn", "block"):
            raise ConfigError(f"policy unknown_licence={self.unknown_licence!r}: expected 'warn' or 'block'")
        if self.intended_use not in ("commercial", "non-commercial"):
            raise ConfigError(f"policy intended_use={self.intended_use!r}: expected 'commercial' or "
                              "'non-commercial'")
        if self.max_trigger_score is not None and not 0.0 <= self.max_trigger_score <= 1.0:
            raise ConfigError(f"policy max_trigger_score={self.max_trigger_score!r}: expected a value in [0, 1]")
        object.__setattr__(self, "blocked_licences", tuple(normalize_licence(x) for x in self.blocked_licences))


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a ``governance.yaml``; unknown keys are an error that lists the known ones."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot read the policy ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of policy settings, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(Policy)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown policy keys {unknown}; known keys: {sorted(known)}")
    if "blocked_licences" in data:
        data["blocked_licences"] = tuple(data["blocked_licences"] or ())
    return Policy(**data)


@dataclass(frozen=True)
class RuleFailure:
    """A rule the data failed, what was found, and how to fix or override it."""

    rule: str
    message: str
    fix: str


@dataclass
class Decision:
    """The result of a policy check: allowed, or the failed rules; warnings either way."""

    failures: list[RuleFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    overridden: str | None = None

    @property
    def allowed(self) -> bool:
        return not self.failures or self.overridden is not None

    def to_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "overridden": self.overridden,
                "failures": [dataclasses.asdict(f) for f in self.failures], "warnings": list(self.warnings)}


def _contamination_rules(report: ScanReport, policy: Policy, decision: Decision) -> None:
    sets = list(report.contamination.evals) if report.contamination else []
    for ev in [*sets, *report.splits]:
        if ev.fraction > policy.max_contamination:
            decision.failures.append(RuleFailure(
                "max_contamination",
                f"{ev.contaminated} of {ev.rows} rows ({ev.fraction:.2%}) of evaluation set '{ev.name}' appear "
                f"in the training data; the policy allows {policy.max_contamination:.2%}",
                "remove them with slimtune.governance.decontaminate (slimtune data scan --decontaminate OUT)"))


def _licence_rules(report: ScanReport, policy: Policy, decision: Decision) -> None:
    for manifest, verdict in zip(report.manifests, report.licences, strict=True):
        where = f"{manifest.path}: licence '{verdict.dataset_licence}' ({manifest.licence_source})"
        if verdict.dataset_licence in policy.blocked_licences:
            decision.failures.append(RuleFailure("blocked_licences", f"{where} is on the policy's blocked list",
                                                 "use other data, or change blocked_licences"))
        elif verdict.level == "block" or (verdict.level == "warn" and policy.licence_warnings_block):
            decision.failures.append(RuleFailure("licence", f"{where}: {verdict.reason}",
                                                 "use data whose licence allows this use, or declare the "
                                                 "correct licence"))
        elif verdict.level == "warn":
            decision.warnings.append(f"{where}: {verdict.reason}")


def check(report: ScanReport, policy: Policy | None = None) -> Decision:
    """Evaluate a scan report against the policy; never raises for findings (enforce() does)."""
    policy = policy or Policy()
    decision = Decision()
    _contamination_rules(report, policy, decision)
    _licence_rules(report, policy, decision)
    if report.pii is not None and report.pii.total and not policy.allow_pii:
        counts = ", ".join(f"{k} {v}" for k, v in report.pii.counts.items() if v)
        decision.failures.append(RuleFailure(
            "allow_pii", f"{report.pii.total} PII findings in {report.pii.rows_with_pii} rows ({counts})",
            "redact them with slimtune.governance.redact_file, or set allow_pii: true"))
    triggers = report.poisoning.triggers if report.poisoning else []
    if policy.max_trigger_score is not None and triggers and triggers[0].score > policy.max_trigger_score:
        top = triggers[0]
        decision.failures.append(RuleFailure(
            "max_trigger_score", f"n-gram '{top.ngram}' is tied to label '{top.label}' in {top.rows} rows "
            f"(score {top.score:.2f} > {policy.max_trigger_score:.2f})", "inspect and remove those rows"))
    return decision


def enforce(decision: Decision, override_reason: str | None = None, audit: AuditLog | None = None, *,
            subject: str = "", actor: str | None = None) -> Decision:
    """Raise PolicyError naming every failed rule, unless an override reason is given and recorded."""
    if not decision.failures:
        if audit is not None:
            audit.append("policy.pass", subject, {"warnings": decision.warnings}, actor=actor)
        return decision
    lines = [f"  - {f.rule}: {f.message} (fix: {f.fix})" for f in decision.failures]
    if override_reason is None or not override_reason.strip():
        raise PolicyError("governance policy refused the action:\n" + "\n".join(lines) + f"\n{OVERRIDE_HINT}")
    if audit is None:
        raise PolicyError("an override must be recorded: pass audit=AuditLog(path) with the override reason")
    audit.append("policy.override", subject, {"reason": override_reason.strip(),
                                              "failures": [dataclasses.asdict(f) for f in decision.failures]},
                 actor=actor)
    decision.overridden = override_reason.strip()
    return decision
