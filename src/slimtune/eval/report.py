"""Reports: results as JSON, a Markdown summary for terminals, and one self-contained HTML file with tables
and PNG figures embedded as data URIs (see figures.py)."""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune.formats.safe import atomic_file, write_json

if TYPE_CHECKING:
    from slimtune.eval.ablate import AblationResult

log = logging.getLogger(__name__)


def fmt(value: Any, digits: int = 4) -> str:
    """A number as a short string: integers with thousands separators, floats to ``digits`` significant."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{max(1, digits - 1)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def mean_pm(spread: dict[str, float] | None, digits: int = 4) -> str:
    if not spread:
        return "-"
    return f"{fmt(spread['mean'], digits)} ± {fmt(spread['std'], 2)}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# ----- ablation tables -----------------------------------------------------------------------------------
def ablation_rows(result: AblationResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-group table, sorted by the primary metric (best first)."""
    set_name, metric = result.primary
    lower_better = metric in ("loss", "perplexity")
    other = [m for m in ("macro_f1", "loss", "perplexity", "token_f1", "rouge_l")
             if m != metric and any(m in g["metrics"].get(set_name, {}) for g in result.groups)][:2]
    header = ["cell", f"{set_name} {metric} (mean ± sd)", *[f"{set_name} {m}" for m in other], "seeds", "per seed",
              "trainable", "share", "adapter size", "train time (s)"]

    def key(g: dict[str, Any]) -> float:
        value = g["metrics"].get(set_name, {}).get(metric, {}).get("mean", float("nan"))
        return value if lower_better else -value

    rows = []
    for g in sorted(result.groups, key=key):
        seeds = " / ".join(fmt(v, 3) for v in g["per_seed"].values())
        rows.append([g["group"], mean_pm(g["metrics"].get(set_name, {}).get(metric)),
                     *[mean_pm(g["metrics"].get(set_name, {}).get(m)) for m in other], str(len(g["seeds"])), seeds,
                     fmt(g["trainable_parameters"]), f"{100 * g['trainable_share']:.3f}%",
                     human_bytes(g["adapter_bytes"]), mean_pm(g["wall_time_s"], 3)])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def latency_rows(result: AblationResult) -> tuple[list[str], list[list[str]]]:
    header = ["cell", "variant", "batch", "p50 ms", "p95 ms", "p99 ms", "examples/s"]
    rows = []
    for record in result.cells:
        latency = record.get("latency")
        if not latency:
            continue
        for variant, measured in latency["variants"].items():
            if isinstance(measured, dict):
                rows.append([record["cell"]["group"], variant, "-", "-", "-", "-", measured.get("error", "")[:60]])
                continue
            for row in measured:
                rows.append([record["cell"]["group"], variant, str(int(row["batch_size"])), fmt(row["p50_ms"], 3),
                             fmt(row["p95_ms"], 3), fmt(row["p99_ms"], 3), fmt(row["examples_per_s"], 3)])
    return header, rows


def summary_line(result: AblationResult, meta: dict[str, Any] | None) -> str:
    line = (f"{len(result.cells)} cells in {len(result.groups)} groups; ranked by {result.primary[0]} "
            f"{result.primary[1]} (mean ± sample sd over seeds).")
    if meta:
        line += " " + "; ".join(f"{k}: {fmt(v)}" for k, v in meta.items())
    return line


def ablation_markdown(result: AblationResult, title: str = "Ablation", meta: dict[str, Any] | None = None) -> str:
    header, rows = ablation_rows(result)
    parts = [f"# {title}", "", summary_line(result, meta), "", markdown_table(header, rows)]
    if result.failed or result.pending:
        parts += ["", f"Failed: {', '.join(result.failed) or 'none'}; not yet run: {len(result.pending)}"]
    lat_header, lat_rows = latency_rows(result)
    if lat_rows:
        parts += ["", "## Inference latency (first seed)", "", markdown_table(lat_header, lat_rows)]
    return "\n".join(parts) + "\n"


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1150px;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}figure{margin:1em 0}"
        "figcaption{font-size:13px;color:#555}")


def html_page(title: str, sections: list[str]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")


def figure_html(data_uri: str, caption: str) -> str:
    return f"<figure><img src='{data_uri}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}" \
           "</figcaption></figure>"


def ablation_html(result: AblationResult, title: str = "Ablation", meta: dict[str, Any] | None = None) -> str:
    from slimtune.eval import figures

    header, rows = ablation_rows(result)
    sections = [f"<p>{html.escape(summary_line(result, meta))}</p>", html_table(header, rows)]
    for uri, caption in figures.ablation_figures(result):
        sections.append(figure_html(uri, caption))
    lat_header, lat_rows = latency_rows(result)
    if lat_rows:
        sections += ["<h2>Inference latency (first seed)</h2>", html_table(lat_header, lat_rows)]
    return html_page(title, sections)


def write_ablation_reports(result: AblationResult, out_dir: str | Path, stem: str = "ablation",
                           title: str = "Ablation", meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """OUT/<stem>.json, .md and .html; returns their paths. ``meta`` (machine, timing) goes into all three."""
    out = Path(out_dir)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "html": out / f"{stem}.html"}
    write_json(paths["json"], {**result.as_dict(), "meta": dict(meta or {})})
    with atomic_file(paths["md"], "w") as f:
        f.write(ablation_markdown(result, title, meta))
    with atomic_file(paths["html"], "w") as f:
        f.write(ablation_html(result, title, meta))
    log.info("ablation reports written: %s", ", ".join(str(p) for p in paths.values()))
    return paths


# ----- one run's evaluation --------------------------------------------------------------------------------
def eval_metric_rows(report: Any) -> tuple[list[str], list[list[str]]]:
    """Per set and metric: the value and its bootstrap interval."""
    header = ["set", "kind", "metric", "value", "95% interval"]
    rows = []
    intervals = report.suite.get("intervals", {})
    kinds = report.suite.get("kinds", {})
    for set_name, values in report.metrics.items():
        for metric, value in values.items():
            ci = intervals.get(set_name, {}).get(metric)
            span = f"[{fmt(ci['low'])}, {fmt(ci['high'])}]" if ci else "-"
            rows.append([set_name, kinds.get(set_name, "general"), metric, fmt(value), span])
    for name, gap in report.suite.get("gaps", {}).items():
        rows.append([name, "gap", str(gap["metric"]), fmt(gap["estimate"]), f"[{fmt(gap['low'])}, {fmt(gap['high'])}]"])
    return header, rows


def efficiency_rows(efficiency: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    training = efficiency.get("training", {})
    items = [("trainable parameters", fmt(efficiency.get("trainable_parameters"))),
             ("total parameters", fmt(efficiency.get("total_parameters"))),
             ("trainable share", f"{100 * efficiency.get('trainable_share', 0.0):.3f}%"),
             ("saved size", human_bytes(efficiency.get("adapter_bytes"))),
             ("training steps", fmt(training.get("steps"))), ("training tokens", fmt(training.get("tokens"))),
             ("wall time (s)", fmt(training.get("wall_time_s"))),
             ("training tokens/s", fmt(training.get("tokens_per_s"))),
             ("peak memory", human_bytes(training.get("peak_memory_bytes"))),
             ("estimated FLOPs (this method)", fmt(efficiency.get("flops_estimate"))),
             ("estimated FLOPs (full fine-tuning)", fmt(efficiency.get("flops_full_fine_tune"))),
             (f"cost ({efficiency.get('currency', '')})", fmt(efficiency.get("cost")))]
    return ["quantity", "value"], [[k, v] for k, v in items]


def run_latency_rows(latency: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "batch", "p50 ms", "p95 ms", "p99 ms", "examples/s", "tokens/s"]
    rows = []
    for variant, measured in (latency or {}).get("variants", {}).items():
        if isinstance(measured, dict):
            rows.append([variant, "-", "-", "-", "-", "-", measured.get("error", "")[:60]])
            continue
        rows += [[variant, str(int(r["batch_size"])), fmt(r["p50_ms"], 3), fmt(r["p95_ms"], 3), fmt(r["p99_ms"], 3),
                  fmt(r["examples_per_s"], 3), fmt(r["tokens_per_s"], 3)] for r in measured]
    return header, rows


def _forgetting_line(suite: dict[str, Any]) -> str:
    forgetting = suite.get("forgetting") or {}
    if "skipped" in forgetting:
        return f"Forgetting check skipped: {forgetting['skipped']}"
    if "metrics" not in forgetting:
        return "Forgetting check: not configured."
    m, ci = forgetting["metrics"], forgetting["loss_delta_interval"]
    return (f"Forgetting on {forgetting['set']}: perplexity {fmt(m['perplexity_base'])} (base) -> "
            f"{fmt(m['perplexity'])} (adapted); loss change {fmt(m['loss_delta'])} "
            f"[{fmt(ci['low'])}, {fmt(ci['high'])}].")


def _evaluated(report: Any) -> str:
    source = report.source
    return str(source.get("run") or source.get("adapter") or source.get("model") or "")


def eval_markdown(report: Any) -> str:
    parts = [f"# Evaluation of {_evaluated(report)}", ""]
    parts += [markdown_table(*eval_metric_rows(report)), "", _forgetting_line(report.suite), "", "## Efficiency", "",
              markdown_table(*efficiency_rows(report.efficiency))]
    if report.latency:
        parts += ["", f"## Inference latency ({report.latency.get('device')}, seq {report.latency.get('seq_len')})",
                  "", markdown_table(*run_latency_rows(report.latency))]
    return "\n".join(parts) + "\n"


def eval_html(report: Any) -> str:
    from slimtune.eval import figures

    sections = [html_table(*eval_metric_rows(report)), f"<p>{html.escape(_forgetting_line(report.suite))}</p>",
                "<h2>Efficiency</h2>", html_table(*efficiency_rows(report.efficiency))]
    if report.latency:
        sections += ["<h2>Inference latency</h2>", html_table(*run_latency_rows(report.latency))]
        bars = figures.run_latency_bars(report.latency)
        if bars is not None:
            sections.append(figure_html(bars, "p50 latency by batch size: base, unmerged and merged"))
    return html_page(f"Evaluation of {_evaluated(report)}", sections)
