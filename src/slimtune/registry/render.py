"""Markdown renderings of registry results, for the CLI (``rich.markdown.Markdown(text)``) and reports.

Each function returns a string and prints nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from slimtune.registry.aliases import PromotionResult
from slimtune.registry.policy import GateResult
from slimtune.registry.records import GcReport, History, VerifyReport, VersionRecord


def _cell(value: Any) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _headline(rec: VersionRecord, limit: int = 3) -> str:
    items = [f"{s}/{m}={_cell(v)}" for s, ms in sorted(rec.metrics.items()) for m, v in sorted(ms.items())]
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def render_versions(records: Sequence[VersionRecord]) -> str:
    """``registry list``: one row per version."""
    if not records:
        return "_no versions_"
    rows = [
        (
            str(r.ref),
            r.created,
            r.created_by,
            r.base_model,
            ", ".join(r.aliases),
            _headline(r),
            "deleted" if r.deleted else "live",
        )
        for r in records
    ]
    return table(("version", "created", "by", "base model", "aliases", "metrics", "state"), rows)


def render_version(rec: VersionRecord) -> str:
    """``registry show``: one version in full."""
    m = rec.manifest
    state = f"deleted {rec.deleted_at} by {rec.deleted_by}" if rec.deleted else "live"
    parts = [
        f"## {rec.ref}",
        table(
            ("field", "value"),
            [
                ("state", state),
                ("aliases", ", ".join(rec.aliases) or "-"),
                ("created", rec.created),
                ("created by", rec.created_by),
                ("base model", m.get("base_model")),
                ("base fingerprint", m.get("base_fingerprint")),
                ("peft_type", (m.get("adapter_config") or {}).get("peft_type")),
                ("library", m.get("library_version")),
                ("git", m.get("git_hash")),
                ("seed", m.get("seed")),
                ("source", m.get("source")),
                ("manifest sha256", rec.manifest_sha256),
                ("signature", (rec.signature or "unsigned").split(":")[0]),
            ],
        ),
        "### Metrics",
        table(
            ("eval set", "metric", "value"),
            [(s, k, v) for s, ms in sorted(rec.metrics.items()) for k, v in sorted(ms.items())],
        )
        if rec.metrics
        else "_none recorded_",
        "### Scans",
        table(("scan", "result"), sorted((m.get("scans") or {}).items())) if m.get("scans") else "_none recorded_",
        "### Files",
        table(("file", "sha256", "bytes"), [(f.relpath, f.sha256[:16], f.size) for f in rec.files]),
    ]
    return "\n\n".join(parts)


def render_history(h: History) -> str:
    """``registry history``: versions, alias moves and audit entries of one model."""
    parts = [
        f"## {h.name}",
        "aliases: " + (", ".join(f"{a} -> {v}" for a, v in sorted(h.aliases.items())) or "none"),
        "### Versions",
        render_versions(h.versions),
        "### Alias moves",
        table(
            ("when", "who", "alias", "from", "to", "action", "why"),
            [(m.at, m.actor, m.alias, m.old_version, m.new_version, m.action, m.reason) for m in h.alias_moves],
        )
        if h.alias_moves
        else "_none_",
        "### Audit",
        table(
            ("#", "when", "who", "action", "version", "alias", "why"),
            [(a.seq, a.at, a.actor, a.action, a.version, a.alias, a.reason) for a in h.audit],
        ),
    ]
    return "\n\n".join(parts)


def render_diff(diff: dict[str, Any], changed_only: bool = False) -> str:
    """``registry diff``: each section as a table of key, a, b (and delta for metrics)."""
    a, b = diff["a"], diff["b"]
    parts = [f"## {a} vs {b}"]
    for section in ("config", "lineage", "recipe", "scans", "files"):
        rows = [
            (k, v["a"], v["b"], "*" if v["changed"] else "")
            for k, v in diff[section].items()
            if v["changed"] or not changed_only
        ]
        parts += [f"### {section}", table(("key", a, b, "changed"), rows) if rows else "_no differences_"]
    metric_rows = [
        (k, v["a"], v["b"], v["delta"], "lower" if v["lower_is_better"] else "higher")
        for k, v in diff["metrics"].items()
    ]
    parts += [
        "### metrics",
        table(("eval set/metric", a, b, "delta", "better"), metric_rows) if metric_rows else "_none recorded_",
    ]
    return "\n\n".join(parts)


def render_gate(gate: GateResult) -> str:
    """The promotion gate's comparisons and failures."""
    rows = [
        (
            c.eval_set,
            c.metric,
            c.current,
            c.candidate,
            "lower" if c.lower_is_better else "higher",
            c.allowed,
            "ok" if c.ok else "REGRESSION",
        )
        for c in gate.comparisons
    ]
    parts = [
        table(("eval set", "metric", "current", "candidate", "better", "allowed", "result"), rows)
        if rows
        else "_no shared metrics compared_"
    ]
    if gate.failures:
        parts.append("\n".join(f"- **{f.rule}**: {f.message}" for f in gate.failures))
    return "\n\n".join(parts)


def render_promotion(result: PromotionResult) -> str:
    """What promote, set_alias or rollback did."""
    if not result.changed:
        return f"{result.ref.name}@{result.alias} already points at {result.ref}; nothing changed"
    head = (
        f"{result.ref.name}@{result.alias}: {result.previous if result.previous is not None else '-'} -> "
        f"{result.ref.version}" + (" (FORCED)" if result.forced else "")
    )
    return head + ("\n\n" + render_gate(result.gate) if result.gate.comparisons or result.gate.failures else "")


def render_verify(report: VerifyReport) -> str:
    """``registry verify``."""
    head = (
        f"{'OK' if report.ok else 'FAILED'}: {report.checked_blobs} blobs re-hashed, "
        f"{len(report.corrupt)} corrupt, {len(report.missing)} missing, "
        f"{len(report.bad_signatures)} manifest/signature problems, "
        f"{len(report.audit_problems)} audit problems, "
        f"{report.unreferenced_blobs} unreferenced blobs (run gc)"
    )
    parts = [head]
    if report.problems:
        parts.append(
            table(
                ("blob", "status", "used by"),
                [(p.sha256, p.status, ", ".join(p.used_by) or "-") for p in report.problems],
            )
        )
    parts += [f"- {p}" for p in (*report.bad_signatures, *report.audit_problems)]
    return "\n\n".join(parts)


def render_gc(report: GcReport) -> str:
    """``registry gc``."""
    verb = "would remove" if report.dry_run else "removed"
    return f"{verb} {len(report.removed)} blobs ({report.freed_bytes} bytes); {report.kept} blobs in use kept"
