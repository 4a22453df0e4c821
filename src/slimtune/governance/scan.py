"""The data scan behind ``slimtune data scan DATA --against EVAL``: manifests, licences, contamination and
leakage, PII and poisoning signals of a training set in one report (JSON and Markdown), checked against a
policy when one is given.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtune.governance._atomic import atomic_write_text
from slimtune.governance.audit import AuditLog
from slimtune.governance.contamination import (
    ContaminationConfig,
    ContaminationReport,
    EvalContamination,
    scan_contamination,
    split_overlap,
)
from slimtune.governance.licences import LicenceVerdict, check_licence
from slimtune.governance.manifest import FileManifest, build_manifest
from slimtune.governance.pii import PiiReport, scan_pii
from slimtune.governance.poisoning import PoisoningConfig, PoisoningReport, scan_poisoning
from slimtune.governance.policy import Decision, Policy, check, enforce, load_policy
from slimtune.governance.reader import BadBytes

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


@dataclass
class ScanReport:
    """Everything one scan found; ``decision`` is set when a policy was given."""

    manifests: list[FileManifest]
    licences: list[LicenceVerdict]
    contamination: ContaminationReport | None = None
    splits: list[EvalContamination] = field(default_factory=list)
    pii: PiiReport | None = None
    poisoning: PoisoningReport | None = None
    decision: Decision | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifests": [m.to_dict() for m in self.manifests],
            "licences": [v.to_dict() for v in self.licences],
            "contamination": self.contamination.to_dict() if self.contamination else None,
            "splits": [s.to_dict() for s in self.splits],
            "pii": self.pii.to_dict() if self.pii else None,
            "poisoning": self.poisoning.to_dict() if self.poisoning else None,
            "decision": self.decision.to_dict() if self.decision else None,
            "seconds": round(self.seconds, 3),
        }

    def write_json(self, path: PathLike) -> Path:
        """Write the report as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n")

    def to_markdown(self) -> str:
        """A human-readable summary (tables; examples are masked or cut short)."""
        return "\n".join(_markdown(self)) + "\n"


def _cell(text: Any, limit: int = 80) -> str:
    value = str(text).replace("|", "\\|").replace("\n", " ")
    return value if len(value) <= limit else value[:limit] + "..."


def _md_data(report: ScanReport) -> list[str]:
    out = ["## Data", "", "| file | rows | bytes | sha256 | licence | verdict |",
           "| --- | --- | --- | --- | --- | --- |"]
    for m, v in zip(report.manifests, report.licences, strict=True):
        out.append(f"| {_cell(m.path, 60)} | {m.rows} | {m.bytes} | `{m.sha256[:12]}` | {m.licence} "
                   f"({_cell(m.licence_source, 40)}) | {v.level}: {_cell(v.reason)} |")
    return [*out, ""]


def _md_contamination(report: ScanReport) -> list[str]:
    sets = (report.contamination.evals if report.contamination else []) + report.splits
    if not sets:
        return []
    out = ["## Contamination", "", "| evaluation set | rows | contaminated | fraction | exact | near | 13-gram |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for e in sets:
        k = e.by_kind
        out.append(f"| {_cell(e.name)} | {e.rows} | {e.contaminated} | {e.fraction:.2%} | {k['exact']} | "
                   f"{k['near_duplicate']} | {k['ngram']} |")
    for e in sets:
        for ex in e.examples[:3]:
            out.append(f"- {e.name} line {ex.eval_line} ~ {Path(ex.train_path).name}:{ex.train_line} "
                       f"({ex.kind}, {ex.score:.2f}): {_cell(ex.eval_text)}")
    return [*out, ""]


def _md_findings(report: ScanReport) -> list[str]:
    out: list[str] = []
    if report.pii is not None:
        counts = ", ".join(f"{k}: {v}" for k, v in report.pii.counts.items() if v) or "none"
        out += ["## PII", "", f"{report.pii.total} findings in {report.pii.rows_with_pii} of {report.pii.rows} "
                f"rows ({counts}).", ""]
        for kind, shown in report.pii.examples.items():
            out += [f"- {kind}: " + ", ".join(f"{Path(e['path']).name}:{e['line']} `{e['masked']}`" for e in shown)]
        out.append("")
    if report.poisoning is not None:
        p = report.poisoning
        out += ["## Poisoning signals (scores, not verdicts)", ""]
        out += [f"- trigger candidate '{_cell(t.ngram, 40)}': {t.rows} rows, {t.purity:.0%} label '{t.label}' "
                f"(base rate {t.base_rate:.0%}), score {t.score:.2f}" for t in p.triggers[:5]]
        out += [f"- near-duplicate group of {c.size} rows ({c.fraction:.2%}), {c.ratio_to_typical:.1f}x typical"
                for c in p.floods[:5]]
        out += [f"- conflicting labels among {c.size} near duplicates: {c.labels}" for c in p.conflicts[:5]]
        out.append("")
    return out


def _markdown(report: ScanReport) -> list[str]:
    out = ["# Data scan", "", *_md_data(report), *_md_contamination(report), *_md_findings(report)]
    if report.decision is not None:
        d = report.decision
        out += ["## Policy", "", "allowed" if d.allowed and not d.overridden else
                ("overridden: " + d.overridden if d.overridden else "refused"), ""]
        out += [f"- FAIL {f.rule}: {f.message} (fix: {f.fix})" for f in d.failures]
        out += [f"- warn: {w}" for w in d.warnings]
    return out


def _eval_sets(against: Sequence[PathLike] | Mapping[str, Sequence[PathLike]]) -> dict[str, list[PathLike]]:
    if isinstance(against, Mapping):
        return {str(k): list(v) for k, v in against.items()}
    names: dict[str, list[PathLike]] = {}
    for path in against:
        name = Path(path).name
        names[name if name not in names else str(path)] = [path]
    return names


def _verdict(manifest: FileManifest, model_licence: str | None, policy: Policy) -> LicenceVerdict:
    verdict = check_licence(manifest.licence, model_licence, policy.intended_use, unknown=policy.unknown_licence)
    if manifest.licence_inferred and verdict.level == "ok":
        # package metadata often describes the package's code, not the data it ships: confirm, do not assume
        return LicenceVerdict("warn", f"licence inferred from {manifest.licence_source}, which may cover code "
                              "rather than data: declare the dataset licence to confirm", verdict.dataset_licence,
                              verdict.model_licence, verdict.use)
    return verdict


def scan_dataset(
    paths: Sequence[PathLike],
    against: Sequence[PathLike] | Mapping[str, Sequence[PathLike]] = (),
    policy: Policy | None = None,
    *,
    licences: str | Mapping[str, str] | None = None,
    base_model_licence: str | None = None,
    splits: Mapping[str, Sequence[PathLike]] | None = None,
    contamination: ContaminationConfig | None = None,
    poisoning: PoisoningConfig | bool = True,
    pii: bool = True,
    bad_bytes: BadBytes = "error",
) -> ScanReport:
    """Scan training files: manifest and licence of each, contamination against each evaluation set (and
    between ``splits`` of one dataset), PII, poisoning signals; with ``policy``, the decision too.

    ``licences`` declares SPDX ids (one for all files, or per path); undeclared ones are detected.
    ``base_model_licence`` overrides the policy's. ``poisoning=False`` skips the (in-memory) poisoning scan.
    """
    start = time.perf_counter()
    pol = policy or Policy()
    declared = licences if isinstance(licences, Mapping) else dict.fromkeys(map(str, paths), licences)
    manifests = [build_manifest(p, licence=declared.get(str(p)), bad_bytes=bad_bytes) for p in paths]
    model_licence = base_model_licence or pol.base_model_licence
    report = ScanReport(manifests, [_verdict(m, model_licence, pol) for m in manifests])
    evals = _eval_sets(against)
    if evals:
        report.contamination = scan_contamination(paths, evals, contamination, bad_bytes=bad_bytes)
    if splits:
        report.splits = split_overlap(splits, contamination, bad_bytes=bad_bytes)
    if pii:
        report.pii = scan_pii(paths, bad_bytes=bad_bytes)
    if poisoning is not False:
        report.poisoning = scan_poisoning(paths, poisoning if isinstance(poisoning, PoisoningConfig) else None,
                                          bad_bytes=bad_bytes)
    if policy is not None:
        report.decision = check(report, policy)
    report.seconds = time.perf_counter() - start
    log.info("scanned %d files in %.1fs", len(manifests), report.seconds)
    return report


def _summary(report: ScanReport) -> dict[str, Any]:
    c = report.contamination
    return {
        "files": [{"path": m.path, "sha256": m.sha256, "rows": m.rows, "licence": m.licence} for m in report.manifests],
        "licence_levels": [v.level for v in report.licences],
        "max_contamination": c.max_fraction if c else None,
        "pii_findings": report.pii.total if report.pii else None,
        "top_trigger_score": report.poisoning.triggers[0].score if report.poisoning and report.poisoning.triggers
        else None,
        "failures": [f.rule for f in report.decision.failures] if report.decision else [],
    }


def gate(
    paths: Sequence[PathLike],
    against: Sequence[PathLike] | Mapping[str, Sequence[PathLike]] = (),
    *,
    policy: Policy | PathLike | None = None,
    audit: AuditLog | PathLike | None = None,
    override_reason: str | None = None,
    subject: str = "train",
    actor: str | None = None,
    **scan_kwargs: Any,
) -> ScanReport:
    """The pre-training gate: scan, check against the policy (a Policy or a governance.yaml path), record
    the scan in the audit log, and raise PolicyError on failures unless ``override_reason`` is given (then
    the override is recorded too). Returns the report for the run's lineage."""
    pol = policy if isinstance(policy, Policy) else (load_policy(policy) if policy is not None else Policy())
    log_ = audit if isinstance(audit, AuditLog) or audit is None else AuditLog(audit)
    report = scan_dataset(paths, against, pol, **scan_kwargs)
    if report.decision is None:  # scan_dataset sets it whenever a policy is passed; this keeps mypy honest
        report.decision = check(report, pol)
    if log_ is not None:
        log_.append("data.scan", subject, _summary(report), actor=actor)
    enforce(report.decision, override_reason, log_, subject=subject, actor=actor)
    return report
