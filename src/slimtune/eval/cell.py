"""One ablation cell, start to finish, in the current process: load the base model (seeded, so that a fresh
classification head differs by seed), inject the cell's method (or unfreeze everything for the full
fine-tuning baseline), train with slimtune's Trainer into the cell folder (which writes the adapter or model,
metrics.jsonl and train_result.json, but no checkpoints), run the recipe's evaluation plan, take the training
cost from CELL/train_result.json, and write CELL/result.json atomically. A cell that raises writes
CELL/error.json instead and is run again on resume."""

from __future__ import annotations

import functools
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.errors import ConfigError
from slimtune.eval.efficiency import (
    LatencyConfig,
    PriceTable,
    benchmark_latency,
    directory_bytes,
    efficiency_summary,
    training_cost_from_run,
)
from slimtune.eval.grid import Cell, resolve_layers, resolve_targets
from slimtune.eval.plan import eval_plan
from slimtune.eval.suites import run_suite

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"
ERROR_NAME = "error.json"
HEAD_ADAPTER = "head"


@functools.lru_cache(maxsize=4)
def _built_data(model_json: str, data_json: str) -> tuple[Any, Any]:
    """The tokenizer and the recipe's data, built once per process (cells differ in method, not data)."""
    from slimtune.train.recipe import ModelSpec, load_tokenizer
    from slimtune.train.run import build_data

    tokenizer = load_tokenizer(ModelSpec(**json.loads(model_json)))
    return tokenizer, build_data(json.loads(data_json), tokenizer)


def _num_layers(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    value = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not isinstance(value, int):
        raise ConfigError(f"{type(model).__name__} does not say how many layers it has; give explicit layer lists")
    return value


def method_section(cell: Cell, model: nn.Module) -> dict[str, Any]:
    """The cell's method with target groups, layer ranges and the head resolved for this model."""
    section = dict(cell.method)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if "targets" in section:
        section["targets"] = resolve_targets(section["targets"], model_type)
    if "layers" in section:
        section["layers"] = resolve_layers(section["layers"], _num_layers(model))
    return section


def build_model(cell: Cell, base: nn.Module) -> nn.Module:
    """The trainable model of a cell: the base with its adapter (+ head), or the whole base unfrozen."""
    import slimtune as st
    from slimtune.train.recipe import method_config

    if cell.method.get("type") == "full":
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    section = method_section(cell, base)
    if cell.head and "modules_to_save" in _config_fields(section):
        section.setdefault("modules_to_save", list(cell.head))
        return st.adapt(base, method_config(section))
    if cell.head and "exclude" in _config_fields(section) and not section.get("exclude"):
        section["exclude"] = list(cell.head)  # the head trains fully in its own adapter; do not wrap it twice
    model = st.adapt(base, method_config(section))
    if cell.head:  # the method cannot train modules fully: a selective adapter for the head, active together
        st.adapt(model, st.SelectiveConfig(targets=tuple(cell.head)), name=HEAD_ADAPTER)
    return model


def _config_fields(section: dict[str, Any]) -> set[str]:
    from dataclasses import fields

    from slimtune.core.plugin import spec_for_peft_type

    return {f.name for f in fields(spec_for_peft_type(str(section["type"]).upper()).config_cls)}  # type: ignore[arg-type]


def train_cell(cell: Cell, recipe: dict[str, Any], cell_dir: Path) -> tuple[nn.Module, Any, Any, Any]:
    """(trained model, TrainResult, tokenizer, built data) of one cell, trained into ``cell_dir``."""
    from slimtune.train import TrainConfig, Trainer
    from slimtune.train.recipe import ModelSpec, load_model

    tokenizer, data = _built_data(json.dumps(recipe["model"], sort_keys=True), json.dumps(recipe["data"],
                                                                                          sort_keys=True))
    torch.manual_seed(cell.seed)  # a fresh head is initialised here: seeds must reach it
    num_labels = len(data.label_map) if data.label_map else None
    base, _ = load_model(ModelSpec(**recipe["model"]), num_labels=num_labels)
    model = build_model(cell, base)
    config = TrainConfig.from_dict({**recipe.get("train", {}), **cell.train, "lr": cell.lr, "seed": cell.seed})
    # checkpoints=False: a cell is never resumed (an unfinished one reruns from scratch)
    result = Trainer(model, config, data.train, data.collate_fn, run_dir=cell_dir, checkpoints=False,
                     lineage={"cell": cell.as_dict(), "label_map": data.label_map}).fit()
    return model, result, tokenizer, data


def run_cell(cell: Cell, recipe: dict[str, Any], cell_dir: Path, fingerprint: str,
             latency: LatencyConfig | None = None, prices: PriceTable | None = None) -> dict[str, Any]:
    """Train, evaluate and measure one cell; returns (and atomically writes) its result record."""
    from slimtune.formats.safe import write_json

    started, cpu_started = time.perf_counter(), time.process_time()
    plan = eval_plan(recipe, latency=None, prices=prices)  # the grid, not the recipe, says what to time
    model, result, tokenizer, data = train_cell(cell, recipe, cell_dir)
    scored = run_suite(plan.suite, model, tokenizer, label_map=data.label_map)
    saved = result.model_dir or result.adapter_dir
    training = training_cost_from_run(cell_dir)  # what the trainer wrote: CELL/train_result.json
    efficiency = efficiency_summary(model, training, plan.prices, full=cell.method.get("type") == "full",
                                    adapter_bytes=directory_bytes(saved) if saved is not None else None)
    efficiency["adapter_bytes_measured"] = saved is not None
    record: dict[str, Any] = {"cell": cell.as_dict(), "fingerprint": fingerprint, "status": "ok",
                              **scored.as_dict(), "efficiency": efficiency,
                              "losses": result.losses, "steps": result.steps,
                              "latency": benchmark_latency(model, latency) if latency is not None else None,
                              "threads": torch.get_num_threads(), "cell_wall_time": time.perf_counter() - started,
                              "cell_cpu_time": time.process_time() - cpu_started}
    write_json(cell_dir / RESULT_NAME, record)
    (cell_dir / ERROR_NAME).unlink(missing_ok=True)
    return record


def run_cell_safely(cell: Cell, recipe: dict[str, Any], cell_dir: str, fingerprint: str, threads: int,
                    latency: LatencyConfig | None, prices: PriceTable | None) -> dict[str, Any]:
    """Worker entry point: set the thread count, run the cell, turn an exception into CELL/error.json."""
    from slimtune.formats.safe import write_json

    torch.set_num_threads(threads)
    path = Path(cell_dir)
    path.mkdir(parents=True, exist_ok=True)
    try:
        return run_cell(cell, recipe, path, fingerprint, latency, prices)
    except Exception as exc:  # a failed cell must not stop the grid; it is recorded and rerun
        log.error("cell %s failed: %s", cell.cell_id, exc)
        record = {"cell": cell.as_dict(), "fingerprint": fingerprint, "status": "failed",
                  "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        write_json(path / ERROR_NAME, record)
        return record
