"""Report figures as PNG data URIs (matplotlib, Agg backend): training loss curves, the primary metric
against trainable parameters with its Pareto front, latency bars for base / unmerged / merged, and the
per-seed spread of every cell group."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from slimtune.eval.ablate import AblationResult

__all__ = ["ablation_figures", "pareto_front", "png_data_uri"]


def pareto_front(costs: Sequence[float], values: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates (cost no higher and value no worse, one strictly),
    sorted by cost."""
    sign = 1.0 if higher_is_better else -1.0
    points = [(float(c), sign * float(v), i) for i, (c, v) in enumerate(zip(costs, values, strict=True))
              if math.isfinite(float(v))]
    front: list[int] = []
    best = -math.inf
    for _cost, value, index in sorted(points, key=lambda p: (p[0], -p[1])):
        if value > best:
            front.append(index)
            best = value
    return front


def _figure(width: float = 8.0, height: float = 4.5) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if values.size < window or window <= 1:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def loss_curves(result: AblationResult) -> str:
    """Seed-mean training loss per group (moving average over ~5% of the steps)."""
    fig = _figure()
    ax = fig.add_subplot()
    by_group: dict[str, list[list[float]]] = {}
    for record in result.cells:
        losses = [math.nan if x is None else float(x) for x in record.get("losses", [])]
        by_group.setdefault(record["cell"]["group"], []).append(losses)
    for group, runs in by_group.items():
        length = min(len(r) for r in runs)
        if length == 0:
            continue
        mean = np.nanmean(np.array([r[:length] for r in runs]), axis=0)
        window = max(1, length // 20)
        smooth = _smooth(mean, window)
        ax.plot(np.arange(smooth.size) + (mean.size - smooth.size) + 1, smooth, label=group, linewidth=1.2)
    ax.set(xlabel="step", ylabel="training loss", title="Training loss (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    return png_data_uri(fig)


def _primary(group: dict[str, Any], primary: tuple[str, str]) -> dict[str, float]:
    spread: dict[str, float] = group["metrics"].get(primary[0], {}).get(primary[1], {})
    return spread


def metric_vs_params(result: AblationResult) -> str:
    """Primary metric (mean ± sd over seeds) against trainable parameters (log scale), Pareto front drawn."""
    fig = _figure()
    ax = fig.add_subplot()
    groups = [g for g in result.groups if _primary(g, result.primary)]
    costs = [max(1, int(g["trainable_parameters"])) for g in groups]
    means = [_primary(g, result.primary)["mean"] for g in groups]
    sds = [_primary(g, result.primary)["std"] for g in groups]
    higher = result.primary[1] not in ("loss", "perplexity")
    ax.errorbar(costs, means, yerr=sds, fmt="o", capsize=3, color="tab:blue")
    for cost, mean, g in zip(costs, means, groups, strict=True):
        ax.annotate(g["group"], (cost, mean), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(costs, means, higher_is_better=higher)
    if front:
        ax.step([costs[i] for i in front], [means[i] for i in front], where="post", color="tab:red",
                label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters", ylabel=" ".join(result.primary),
           title=f"{' '.join(result.primary)} against trainable parameters")
    return png_data_uri(fig)


def latency_bars(result: AblationResult) -> str | None:
    """p50 latency at the largest measured batch size, per group and variant."""
    rows: dict[str, dict[str, float]] = {}
    batch = 0
    for record in result.cells:
        latency = record.get("latency")
        if not latency:
            continue
        for variant, measured in latency["variants"].items():
            if isinstance(measured, list) and measured:
                last = max(measured, key=lambda r: r["batch_size"])
                batch = int(last["batch_size"])
                rows.setdefault(record["cell"]["group"], {})[variant] = last["p50_ms"]
    if not rows:
        return None
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    variants = ("base", "unmerged", "merged")
    x = np.arange(len(rows))
    for k, variant in enumerate(variants):
        heights = [rows[g].get(variant, 0.0) for g in rows]
        ax.bar(x + (k - 1) * 0.27, heights, width=0.27, label=variant)
    ax.set_xticks(x, list(rows), rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="p50 latency (ms)", title=f"Forward latency at batch {batch}")
    ax.legend(fontsize=8)
    return png_data_uri(fig)


def seed_spread(result: AblationResult) -> str:
    """The primary metric of every seed, per group (the spread behind each mean)."""
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    names = [g["group"] for g in result.groups]
    for i, g in enumerate(result.groups):
        values = [v for v in g["per_seed"].values() if v is not None]
        ax.scatter(np.full(len(values), i), values, s=18, color="tab:blue", alpha=0.8)
        if values:
            ax.hlines(float(np.mean(values)), i - 0.3, i + 0.3, color="tab:red")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel=" ".join(result.primary), title="Per-seed results (red: mean)")
    return png_data_uri(fig)


def ablation_figures(result: AblationResult) -> list[tuple[str, str]]:
    """(data URI, caption) of every figure the ablation report shows."""
    if not result.cells:
        return []
    figures = [(loss_curves(result), "Training loss per step, mean over seeds (moving average)"),
               (metric_vs_params(result), "Metric against trainable parameters; red: the Pareto front"),
               (seed_spread(result), "Per-seed spread of the primary metric")]
    bars = latency_bars(result)
    if bars is not None:
        figures.insert(2, (bars, "Inference latency (p50) of base, unmerged and merged adapters"))
    return figures


def run_latency_bars(latency: dict[str, Any]) -> str | None:
    """One run's p50 latency per batch size, bars per variant."""
    measured = {v: rows for v, rows in latency.get("variants", {}).items() if isinstance(rows, list) and rows}
    if not measured:
        return None
    batches = sorted({int(r["batch_size"]) for rows in measured.values() for r in rows})
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(batches))
    width = 0.8 / len(measured)
    for k, (variant, rows) in enumerate(measured.items()):
        by_batch = {int(r["batch_size"]): r["p50_ms"] for r in rows}
        ax.bar(x + (k - (len(measured) - 1) / 2) * width, [by_batch.get(b, 0.0) for b in batches], width=width,
               label=variant)
    ax.set_xticks(x, [str(b) for b in batches])
    ax.set(xlabel="batch size", ylabel="p50 latency (ms)", title="Forward latency")
    ax.legend(fontsize=8)
    return png_data_uri(fig)
