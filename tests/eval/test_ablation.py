"""A small ablation grid on a tiny random BERT: it runs, resumes after an interruption (a cell limit) without
rerunning or touching finished cells, reruns a half-written cell, and its reports hold every cell."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from slimtune.errors import ConfigError
from slimtune.eval.ablate import run_ablation
from slimtune.eval.grid import Cell, expand_grid, resolve_layers, resolve_targets

from .conftest import FIRST_RUN, GRID, N_CELLS


def test_grid_expansion_counts_pins_and_ablations() -> None:
    cells = expand_grid(GRID)
    assert len(cells) == N_CELLS
    assert len({c.cell_id for c in cells}) == N_CELLS
    by_group: dict[str, list[int]] = {}
    for c in cells:
        by_group.setdefault(c.group, []).append(c.seed)
    assert all(seeds == [0, 1] for seeds in by_group.values())
    bitfit = [c for c in cells if c.method_name == "bitfit"]
    assert {c.lr for c in bitfit} == {5e-3} and all("r" not in c.method for c in bitfit)  # no rank axis on BitFit
    assert all(c.train == {"steps": 3} and c.group.endswith("_steps3") and "train" not in c.method for c in bitfit)
    assert all(c.train == {} for c in cells if c.method_name != "bitfit")
    plain = Cell(**{**bitfit[0].__dict__, "train": {}})
    assert plain.fingerprint({"model": {}}) != bitfit[0].fingerprint({"model": {}})  # overrides decide results
    ablations = sorted({str(c.axes["ablation"]) for c in cells if "ablation" in c.axes})
    assert ablations == ["drop attention", "drop layers 0", "drop mlp"]
    with pytest.raises(ConfigError, match="duplicate"):
        expand_grid({**GRID, "seeds": [0, 0]})
    with pytest.raises(ConfigError, match="unknown grid key"):
        expand_grid({**GRID, "rank": [4]})
    for bad in ({"stepz": 3}, {"lr": 1e-3}, {"seed": 1}):
        with pytest.raises(ConfigError, match=r"methods\.bitfit\.train.*known options: batch_size"):
            expand_grid({"methods": {"bitfit": {"type": "bitfit", "lr": 1e-3, "train": bad}}})


def test_target_groups_split_the_linear_layers(tiny_bert_dir: Path) -> None:
    from torch import nn
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layer." in n]
    attention = {n for n in linear if re.fullmatch(resolve_targets("attention", "bert"), n)}
    mlp = {n for n in linear if re.fullmatch(resolve_targets("mlp", "bert"), n)}
    everything = {n for n in linear if re.fullmatch(resolve_targets("all", "bert"), n)}
    assert len(attention) == 2 * 4 and len(mlp) == 2 * 2  # q, k, v, attention output; intermediate, output
    assert not attention & mlp and attention | mlp == everything == set(linear)
    assert {n for n in linear if re.fullmatch(resolve_targets("all-minus-mlp", "bert"), n)} == attention
    assert resolve_layers("drop:0-1", 4) == (2, 3) and resolve_layers("1-2", 4) == (1, 2)
    with pytest.raises(ConfigError):
        resolve_layers("drop:0-3", 4)


def test_interrupted_ablation_resumes_without_rerunning_finished_cells(ablation: dict[str, Any]) -> None:
    first, second = ablation["first"], ablation["second"]
    assert len(first.ran) == FIRST_RUN and not first.failed and len(first.pending) == N_CELLS - FIRST_RUN
    assert sorted(second.skipped) == sorted(first.ran)  # finished cells were not run again
    assert sorted(second.ran) == sorted(ablation["pending"]) and not second.failed and not second.pending
    for cell_id, stamp in ablation["before"].items():
        assert ablation["after"][cell_id] == stamp, f"finished cell {cell_id} was rewritten"
    assert not (ablation["out"] / "cells" / ablation["pending"][0] / "junk.tmp").exists()
    third = run_ablation(ablation["recipe"], GRID, ablation["out"], workers=1, write_reports=False)
    assert not third.ran and len(third.skipped) == N_CELLS


def test_a_changed_recipe_invalidates_finished_cells(ablation: dict[str, Any]) -> None:
    changed = {**ablation["recipe"], "train": {**ablation["recipe"]["train"], "steps": 5}}
    result = run_ablation(changed, {**GRID, "methods": {"bitfit": GRID["methods"]["bitfit"]}, "leave_one_out": None},
                          ablation["out"],
                          workers=1, max_cells=0, write_reports=False)
    assert len(result.pending) == 2 and not result.skipped


def test_cells_trained_and_were_measured(ablation: dict[str, Any]) -> None:
    cells = ablation["second"].cells
    assert len(cells) == N_CELLS
    for record in cells:
        test = record["metrics"]["test"]
        assert 0.0 <= test["accuracy"] <= 1.0 and test["n"] == 48
        assert sum(map(sum, record["extra"]["test"]["confusion_matrix"])) == 48
        assert record["metrics"]["ood"]["n"] == 40 and "test-ood" in record["gaps"]
        steps = 3 if record["cell"]["method_name"] == "bitfit" else 4  # bitfit's own train: override
        assert len(record["losses"]) == steps and all(x is not None for x in record["losses"])
        eff = record["efficiency"]
        assert 0 < eff["trainable_parameters"] <= eff["total_parameters"]
        assert eff["training"]["tokens"] > 0 and eff["flops_estimate"] > 0
        # the training cost is what the trainer wrote into the cell folder, not measured again
        folder = ablation["out"] / "cells" / record["cell"]["cell_id"]
        summary = json.loads((folder / "train_result.json").read_text())
        assert eff["training"]["source"] == "train_result.json" and summary["steps"] == steps
        assert eff["training"]["tokens_per_s"] == summary["tokens_per_s"] > 0
        assert eff["training"]["peak_memory_bytes"] == summary["peak_memory"] > 0
        saved = folder / ("model" if record["cell"]["method_name"] == "full" else "adapter")
        assert eff["adapter_bytes"] == sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
        assert not (folder / "checkpoints").exists()
    full = [r for r in cells if r["cell"]["method_name"] == "full"]
    lora = [r for r in cells if r["cell"]["method_name"] == "lora"]
    assert full[0]["efficiency"]["trainable_parameters"] == full[0]["efficiency"]["total_parameters"]
    assert max(r["efficiency"]["trainable_parameters"] for r in lora) < full[0]["efficiency"]["trainable_parameters"]
    # seeds differ (head init and data order), so the per-seed results are not copies of each other
    seeds = [r["losses"] for r in cells if r["cell"]["group"] == cells[0]["cell"]["group"]]
    assert seeds[0] != seeds[1]
    timed = [r for r in cells if r["latency"]]
    assert timed and all(r["cell"]["seed"] == 0 for r in timed)
    rows = timed[0]["latency"]["variants"]["unmerged"]
    assert [r["batch_size"] for r in rows] == [1.0, 4.0] and all(r["p50_ms"] <= r["p99_ms"] for r in rows)


def test_reports_hold_every_cell(ablation: dict[str, Any]) -> None:
    out: Path = ablation["out"]
    data = json.loads((out / "ablation.json").read_text())
    assert len(data["cells"]) == N_CELLS and len(data["groups"]) == N_CELLS // 2
    markdown, page = (out / "ablation.md").read_text(), (out / "ablation.html").read_text()
    for group in {c["cell"]["group"] for c in data["cells"]}:
        assert f"| {group} |" in markdown and f"<td>{group}</td>" in page
    assert page.count("data:image/png;base64,") == 4
    for group in data["groups"]:
        spread = group["metrics"]["test"]["accuracy"]
        values = [v for v in group["per_seed"].values()]
        assert spread["mean"] == pytest.approx(sum(values) / len(values))
        assert spread["min"] == min(values) and spread["max"] == max(values)
