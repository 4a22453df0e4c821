"""The ablation runner behind ``slimtune ablate recipe.yaml --grid grid.yaml``: expand the grid, skip the
cells whose OUT/cells/<id>/result.json exists with the same fingerprint, run the rest in worker processes
(each with cores / workers torch threads), then summarise mean and spread per cell group and write the
reports. Every finished cell is written atomically by its worker, so a killed ablation resumes where it was."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimtune.errors import ConfigError
from slimtune.eval.cell import ERROR_NAME, RESULT_NAME, run_cell_safely
from slimtune.eval.efficiency import LatencyConfig, PriceTable
from slimtune.eval.grid import Cell, expand_grid
from slimtune.eval.plan import eval_plan
from slimtune.eval.suites import PRIMARY

log = logging.getLogger(__name__)


@dataclass
class AblationResult:
    """Every cell's record, the per-group summary, and what this call ran or skipped."""

    out_dir: Path
    cells: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    """Cells not run because of max_cells (run the ablation again to finish them)."""
    primary: tuple[str, str] = ("", "")
    """(set, metric) the summary ranks by."""

    def as_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "primary": {"set": self.primary[0], "metric": self.primary[1]},
                "groups": self.groups, "cells": self.cells, "ran": self.ran, "skipped": self.skipped,
                "failed": self.failed, "pending": self.pending}


def cell_dir(out_dir: Path, cell: Cell) -> Path:
    return out_dir / "cells" / cell.cell_id


def finished(out_dir: Path, cell: Cell, fingerprint: str) -> dict[str, Any] | None:
    """The cell's result record when it finished with this fingerprint, else None."""
    path = cell_dir(out_dir, cell) / RESULT_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # cannot happen with atomic writes, but a hand-edited file is not trusted
    return record if record.get("fingerprint") == fingerprint and record.get("status") == "ok" else None


def _threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _latency(grid: dict[str, Any]) -> LatencyConfig | None:
    spec = grid.get("latency")
    if not spec:
        return None
    spec = dict(spec)
    if "batch_sizes" in spec:
        spec["batch_sizes"] = tuple(spec["batch_sizes"])
    return LatencyConfig(**spec)


def _run_cells(todo: list[tuple[Cell, str]], recipe: dict[str, Any], out_dir: Path, workers: int,
               latency: LatencyConfig | None, prices: PriceTable | None, grid_seeds: Sequence[int],
               threads: int | None = None) -> list[dict[str, Any]]:
    """Run cells (in-process for workers <= 1, else in spawned processes); latency on the first seed only."""
    threads = threads or _threads(workers)
    jobs = []
    for cell, fingerprint in todo:
        where = cell_dir(out_dir, cell)
        shutil.rmtree(where, ignore_errors=True)  # an unfinished cell starts clean
        timed = latency if cell.seed == grid_seeds[0] else None
        jobs.append((cell, recipe, str(where), fingerprint, threads, timed, prices))
    if workers <= 1:
        return [run_cell_safely(*job) for job in jobs]
    records = []
    context = multiprocessing.get_context("spawn")  # fork after torch threads started is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_cell_safely, *job): job[0].cell_id for job in jobs}
        for future in as_completed(futures):
            record = future.result()
            log.info("cell %s: %s", futures[future], record.get("status"))
            records.append(record)
    return records


def run_ablation(base_recipe: dict[str, Any], grid: dict[str, Any], out_dir: str | Path, workers: int = 1, *,
                 max_cells: int | None = None, prices: PriceTable | dict[str, Any] | None = None,
                 write_reports: bool = True, threads: int | None = None) -> AblationResult:
    """Run (or resume) the grid around ``base_recipe`` (a recipe mapping, with an optional ``eval:``
    section, see slimtune.eval.plan) into ``out_dir``; ``max_cells`` caps how many unfinished cells this call
    runs; ``threads`` is each worker's torch thread count (default: cores / workers). ``prices`` replaces the
    recipe's eval.prices; what is timed comes from the grid's ``latency`` (none without it)."""
    if not isinstance(base_recipe, dict) or "model" not in base_recipe or "data" not in base_recipe:
        raise ConfigError("base_recipe must be a recipe mapping with model, data and train sections")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    out = Path(out_dir)
    table = prices if isinstance(prices, PriceTable) or prices is None else PriceTable.from_mapping(prices)
    eval_plan(base_recipe, latency=None, prices=table)  # a bad eval: section fails here, not in every cell
    cells = expand_grid(grid)
    seeds = sorted({c.seed for c in cells})
    done: dict[str, dict[str, Any]] = {}
    todo: list[tuple[Cell, str]] = []
    for cell in cells:
        fingerprint = cell.fingerprint(base_recipe)
        record = finished(out, cell, fingerprint)
        if record is not None:
            done[cell.cell_id] = record
        else:
            todo.append((cell, fingerprint))
    pending = todo[max_cells:] if max_cells is not None else []
    todo = todo[:max_cells] if max_cells is not None else todo
    log.info("ablation: %d cells, %d finished, %d to run, %d left for later", len(cells), len(done), len(todo),
             len(pending))
    out.mkdir(parents=True, exist_ok=True)
    records = _run_cells(todo, base_recipe, out, workers, _latency(grid), table, seeds, threads)
    ran = [r["cell"]["cell_id"] for r in records if r.get("status") == "ok"]
    failed = [r["cell"]["cell_id"] for r in records if r.get("status") != "ok"]
    by_id = {**done, **{r["cell"]["cell_id"]: r for r in records if r.get("status") == "ok"}}
    ordered = [by_id[c.cell_id] for c in cells if c.cell_id in by_id]
    result = AblationResult(out, ordered, [], ran, sorted(done), failed, [c.cell_id for c, _ in pending])
    result.primary = primary_metric(ordered)
    result.groups = summarise(ordered, result.primary)
    if write_reports:
        from slimtune.eval.report import write_ablation_reports

        write_ablation_reports(result, out)
    return result


def primary_metric(records: list[dict[str, Any]]) -> tuple[str, str]:
    if not records:
        return ("", "")
    first = records[0]
    kinds = first.get("kinds", {})
    set_name = next((n for n, k in kinds.items() if k == "id"), next(iter(first["metrics"]), ""))
    return set_name, PRIMARY.get(first.get("task", ""), "loss")


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "n": float(arr.size)}


def summarise(records: list[dict[str, Any]], primary: tuple[str, str]) -> list[dict[str, Any]]:
    """One row per cell group: mean/std/min/max over seeds of every metric of every set, plus efficiency."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["cell"]["group"], []).append(record)
    rows = []
    for group, members in groups.items():
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        for set_name in members[0]["metrics"]:
            for metric in members[0]["metrics"][set_name]:
                values = [m["metrics"][set_name][metric] for m in members if metric in m["metrics"].get(set_name, {})]
                if values and all(isinstance(v, int | float) for v in values):
                    metrics.setdefault(set_name, {})[metric] = _spread([float(v) for v in values])
        eff = members[0]["efficiency"]
        per_seed = {str(m["cell"]["seed"]): m["metrics"].get(primary[0], {}).get(primary[1]) for m in members}
        rows.append({"group": group, "axes": {k: v for k, v in members[0]["cell"]["axes"].items()},
                     "seeds": [m["cell"]["seed"] for m in members], "metrics": metrics, "per_seed": per_seed,
                     "trainable_parameters": eff["trainable_parameters"], "trainable_share": eff["trainable_share"],
                     "adapter_bytes": eff["adapter_bytes"],
                     "wall_time_s": _spread([m["efficiency"]["training"]["wall_time_s"] or 0.0 for m in members]),
                     "flops_estimate": eff["flops_estimate"]})
    return rows


def load_ablation(out_dir: str | Path) -> dict[str, Any]:
    """OUT/ablation.json as written by run_ablation."""
    path = Path(out_dir) / "ablation.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; run the ablation first")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


__all__ = ["ERROR_NAME", "RESULT_NAME", "AblationResult", "load_ablation", "run_ablation", "summarise"]
