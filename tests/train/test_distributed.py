"""Two CPU processes (gloo) train exactly like one process with the same global batch; only rank 0 writes;
checkpoints resume in either mode; FSDP2 trains and saves the full adapter."""

from __future__ import annotations

import json
import shutil
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import pytest
import torch

import slimtune as st
from slimtune.formats.safe import read_tensors
from slimtune.train import CheckpointStore, read_metrics
from tests.train.conftest import free_port
from tests.train.helpers import tiny_llama
from tests.train.workers import ddp_run

STEPS = 6
BASE = {"steps": STEPS, "grad_accum": 2, "lr": 5e-3, "schedule": "linear", "warmup_steps": 1, "seed": 11,
        "checkpoint_every": 3, "keep_last": 3, "eval_every": 3, "log_every": 100}


def _launch(procs: BaseContext, world: int, run_dir: Path, config: dict[str, Any], strategy: str = "ddp") -> dict:
    port = free_port()
    ps = [procs.Process(target=ddp_run, args=(r, world, port, str(run_dir), config, strategy))  # type: ignore[attr-defined]
          for r in range(world)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(180)
    assert [p.exitcode for p in ps] == [0] * world, f"ranks failed: {[p.exitcode for p in ps]}"
    return json.loads((run_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def single(procs: BaseContext, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("single")
    return run_dir, _launch(procs, 1, run_dir, {**BASE, "batch_size": 4})


@pytest.fixture(scope="module")
def ddp(procs: BaseContext, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("ddp")
    return run_dir, _launch(procs, 2, run_dir, {**BASE, "batch_size": 2})


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_two_process_ddp_matches_one_process_of_the_same_global_batch(single: tuple, ddp: tuple) -> None:
    (one_dir, one), (two_dir, two) = single, ddp
    assert len(one["losses"]) == STEPS and len(set(one["losses"])) == STEPS
    assert _close(one["losses"], two["losses"]), (one["losses"], two["losses"])
    assert one["tokens"] == two["tokens"] > 0
    for a, b in zip(one["eval"], two["eval"], strict=True):
        assert abs(a["val/loss"] - b["val/loss"]) <= 1e-5
    wa = read_tensors(one_dir / "adapter" / "adapter_model.safetensors")
    wb = read_tensors(two_dir / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-4)


def test_only_rank_zero_writes(ddp: tuple) -> None:
    run_dir, _ = ddp
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))  # one line per step, not one per rank
    assert [p.name for p in CheckpointStore(run_dir / "checkpoints").complete()] == ["step-000003", "step-000006"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_ddp_checkpoint_resumes_in_one_process(procs: BaseContext, single: tuple, ddp: tuple,
                                               tmp_path: Path) -> None:
    (_, one), (two_dir, _) = single, ddp
    run_dir = tmp_path / "resumed"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(two_dir / "checkpoints" / "step-000003", run_dir / "checkpoints" / "step-000003")
    result = _launch(procs, 1, run_dir, {**BASE, "batch_size": 4})
    assert result["resumed_from"] == 3
    assert _close(result["losses"], one["losses"])


def test_fsdp2_on_cpu_trains_like_one_process_and_saves_the_full_adapter(procs: BaseContext, single: tuple,
                                                                         tmp_path: Path) -> None:
    _, one = single
    run_dir = tmp_path / "fsdp"
    result = _launch(procs, 2, run_dir, {**BASE, "batch_size": 2}, strategy="fsdp2")
    assert result["sharded"]
    assert _close(result["losses"], one["losses"], tol=1e-5), (result["losses"], one["losses"])
    loaded = st.load_adapter(tiny_llama(seed=0), run_dir / "adapter")  # full shapes, strict load
    ref = read_tensors(single[0] / "adapter" / "adapter_model.safetensors")
    got = read_tensors(run_dir / "adapter" / "adapter_model.safetensors")
    assert got.keys() == ref.keys() and loaded.adapter_names == ["default"]
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-5, rtol=1e-4)


def test_single_process_checkpoint_resumes_under_fsdp2(procs: BaseContext, single: tuple, tmp_path: Path) -> None:
    one_dir, one = single
    run_dir = tmp_path / "fsdp-resumed"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(one_dir / "checkpoints" / "step-000003", run_dir / "checkpoints" / "step-000003")
    result = _launch(procs, 2, run_dir, {**BASE, "batch_size": 2}, strategy="fsdp2")
    assert result["resumed_from"] == 3 and result["sharded"]
    assert _close(result["losses"], one["losses"], tol=1e-5), (result["losses"], one["losses"])
