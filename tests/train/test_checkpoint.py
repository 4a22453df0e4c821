"""Checkpoint store: keep-last pruning, incomplete folders ignored and cleaned, damaged files refused, and
every piece of state (weights, AdamW moments, schedule, RNGs, data position) round-trips exactly."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtune.errors import CheckpointError
from slimtune.train import Callback, CheckpointStore, TrainConfig, Trainer, TrainerState
from slimtune.train.checkpoint import COMPLETE, capture_rng, restore_rng
from tests.train.helpers import pad_collate, tiny_lora_llama, token_data


def _trainer(run_dir: Path, steps: int, **kw: object) -> Trainer:
    options: dict = {"steps": steps, "batch_size": 4, "lr": 1e-2, "checkpoint_every": 1, "keep_last": 2,
                     "log_every": 100, **kw}
    return Trainer(tiny_lora_llama(), TrainConfig(**options), token_data(24), pad_collate, run_dir=run_dir)


def test_keep_last_prunes_older_checkpoints(tmp_path: Path) -> None:
    _trainer(tmp_path, 5).fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000004", "step-000005"]


def test_incomplete_checkpoints_are_ignored_and_cleaned(tmp_path: Path) -> None:
    _trainer(tmp_path, 3).fit()
    root = tmp_path / "checkpoints"
    fake = root / "step-000099"  # newer, but never marked complete
    fake.mkdir()
    (fake / "trainable.safetensors").write_bytes(b"torn")
    tmp = root / ".tmp-step-000004-123"
    tmp.mkdir()
    store = CheckpointStore(root)
    assert store.latest() == root / "step-000003"
    result = _trainer(tmp_path, 5).fit()
    assert result.resumed_from == 3 and result.steps == 5
    assert not fake.exists() and not tmp.exists()


class _Crash(Callback):
    def on_save(self, state: TrainerState, path: Path) -> None:
        if state.step == 3:
            raise RuntimeError("simulated crash")


def test_resume_in_process_continues_the_same_losses(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full", 6, checkpoint_every=3).fit()
    crashing = _trainer(tmp_path / "split", 6, checkpoint_every=3)
    crashing.callbacks.append(_Crash())
    with pytest.raises(RuntimeError, match="simulated"):
        crashing.fit()
    rest = _trainer(tmp_path / "split", 6, checkpoint_every=3).fit()
    assert rest.resumed_from == 3
    assert rest.losses == full.losses  # bitwise: float32 on CPU, same kernels


def test_a_damaged_file_in_a_complete_checkpoint_is_refused(tmp_path: Path) -> None:
    _trainer(tmp_path, 2).fit()
    ckpt = CheckpointStore(tmp_path / "checkpoints").latest()
    assert ckpt is not None
    weights = ckpt / "optimizer.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors"):
        CheckpointStore(tmp_path / "checkpoints").load(ckpt)
    (ckpt / COMPLETE).unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        CheckpointStore(tmp_path / "checkpoints").load(ckpt)


def test_checkpoint_holds_adamw_state_by_parameter_name(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 2)
    trainer.fit()
    data = CheckpointStore(tmp_path / "checkpoints").load(tmp_path / "checkpoints" / "step-000002")
    names = [n for n, p in trainer.module.named_parameters() if p.requires_grad]
    assert sorted(data.trainable) == sorted(names)
    for name, p in trainer.module.named_parameters():
        if p.requires_grad:
            state = trainer.optimizer.state[p]
            assert torch.equal(data.optimizer_tensors[f"{name}/exp_avg"], state["exp_avg"])
            assert torch.equal(data.optimizer_tensors[f"{name}/exp_avg_sq"], state["exp_avg_sq"])
            assert float(data.optimizer_tensors[f"{name}/step"]) == 2.0
            assert torch.equal(data.trainable[name], p.detach())
    assert data.scheduler["step"] == 2
    assert data.state["position"] == {"epoch": 0, "index": 8}
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))  # no pickle files


def test_rng_states_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)  # move every generator off its seed
    tensors, meta = capture_rng()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(tensors, meta)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
