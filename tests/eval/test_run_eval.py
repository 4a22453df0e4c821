"""evaluate_run on a run trained by slimtune's recipe runner: RUN/eval.json keeps {"metrics": {set: {metric:
value}}}, its loss agrees with the trainer's own evaluation, and the efficiency and latency reports are filled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slimtune.eval.efficiency import LatencyConfig, PriceTable, flops_adapter, flops_full
from slimtune.eval.run_eval import evaluate_run

from .conftest import classification_recipe


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path,
                tiny_data: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    from slimtune.train.recipe import recipe_from_dict
    from slimtune.train.run import run_recipe

    run = tmp_path_factory.mktemp("run")
    base = classification_recipe(tiny_bert_dir, tiny_data, steps=6)
    raw = {"model": base["model"], "train": {**base["train"], "lr": 1e-2},
           "method": {"type": "lora", "r": 2, "alpha": 4, "modules_to_save": ["classifier"]},
           "data": {**base["data"], "eval": {"test": base["eval"]["sets"]["test"]}}, "output_dir": str(run)}
    run_recipe(recipe_from_dict(raw))  # no eval: section, so nothing is evaluated after training
    assert not (run / "eval.json").exists()
    return run, base["eval"]


def test_evaluate_run_writes_eval_json(trained_run: tuple[Path, dict[str, Any]]) -> None:
    run, suite = trained_run
    latency = LatencyConfig(batch_sizes=(1, 3), seq_len=8, warmup=1, repeats=4)
    report = evaluate_run(run, suite=suite, latency=latency, prices={"cpu": 0.5, "currency": "EUR"})
    data = json.loads((run / "eval.json").read_text())
    assert set(data["metrics"]) == {"test", "ood"} and data["metrics"] == report.metrics
    assert all(isinstance(v, float) for m in data["metrics"].values() for v in m.values())
    trainer_eval = [json.loads(line)["eval"] for line in (run / "metrics.jsonl").read_text().splitlines()
                    if '"eval"' in line][-1]
    assert data["metrics"]["test"]["loss"] == pytest.approx(trainer_eval["test/loss"], rel=1e-5)
    assert "test-ood" in data["suite"]["gaps"]
    eff = data["efficiency"]
    adapter_files = sum(f.stat().st_size for f in (run / "adapter").rglob("*") if f.is_file())
    assert eff["adapter_bytes"] == adapter_files
    assert eff["training"]["steps"] == 6 and eff["training"]["tokens"] > 0
    assert eff["training"]["source"] == "train_result.json" and eff["training"]["peak_memory_bytes"] > 0
    assert eff["currency"] == "EUR" and eff["cost"] == pytest.approx(0.5 * eff["training"]["wall_time_s"] / 3600)
    assert eff["flops_estimate"] < eff["flops_full_fine_tune"]
    variants = data["latency"]["variants"]
    assert set(variants) == {"base", "unmerged", "merged"}
    for rows in variants.values():
        assert [r["batch_size"] for r in rows] == [1.0, 3.0]
        assert all(0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in rows)
    assert (run / "eval.md").read_text().count("| test |") >= 3
    assert "data:image/png;base64," in (run / "eval.html").read_text()


def test_evaluate_the_adapter_folder_itself(trained_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, suite = trained_run
    report = evaluate_run(run / "adapter", suite=suite, latency=None, out_dir=tmp_path)
    assert report.latency is None and (tmp_path / "eval.json").is_file()
    assert report.source["run"] == str(run)  # the run folder (and its metrics.jsonl) is found from the adapter
    assert report.metrics == evaluate_run(run, suite=suite, latency=None, write=False).metrics


def test_flops_and_prices_by_hand() -> None:
    assert flops_full(1000, 10) == 60_000
    assert flops_adapter(1000, 50, 10) == 4 * 1000 * 10 + 6 * 50 * 10
    table = PriceTable.from_mapping({"h200": 4.0})
    assert table.cost("NVIDIA H200", 1800) == pytest.approx(2.0)
    assert table.cost("cpu", 3600) == pytest.approx(table.prices["cpu"])
    with pytest.raises(Exception, match="no price"):
        table.cost("TPU v5", 10)
