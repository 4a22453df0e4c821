"""Process bodies for the multi-process tests, started from a forkserver that has imported torch and
transformers once (a fresh interpreter per run would spend most of the test's time importing)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from slimtune.train import TrainConfig, Trainer
from slimtune.train.checkpoint import PAUSE_ENV
from tests.train.helpers import pad_collate, tiny_lora_llama, token_data

RESUME_STEPS = 14


def resume_config(steps: int = RESUME_STEPS) -> TrainConfig:
    # 44 examples, global batch 8: 5 steps per epoch, so a 14-step run crosses two epoch boundaries
    return TrainConfig(steps=steps, batch_size=4, grad_accum=2, lr=5e-3, schedule="cosine", warmup_steps=2,
                       checkpoint_every=2, keep_last=2, seed=7, log_every=100)


def train_run(run_dir: str, pause: float = 0.0, steps: int = RESUME_STEPS) -> None:
    """Train (or resume) the tiny LoRA Llama into run_dir; writes run_dir/../<name>.result.json at the end."""
    os.environ[PAUSE_ENV] = str(pause)
    torch.set_num_threads(1)  # the same kernels in every run, so float32 results are bitwise comparable
    model = tiny_lora_llama(seed=0, dropout=0.1)  # dropout: the torch RNG state must survive a resume
    result = Trainer(model, resume_config(steps), token_data(44, seed=3), pad_collate, run_dir=run_dir).fit()
    _write_result(Path(run_dir), {"resumed_from": result.resumed_from, "steps": result.steps,
                                  "losses": result.losses})


def ddp_run(rank: int, world: int, port: int, run_dir: str, config: dict[str, Any], strategy: str = "ddp") -> None:
    """One rank of a gloo process group (world=1: the single-process reference)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = tiny_lora_llama(seed=0)
    eval_data = {"val": token_data(10, seed=9)}
    trainer = Trainer(model, TrainConfig(**config), token_data(48, seed=4), pad_collate, eval_data=eval_data,
                      run_dir=run_dir, strategy=strategy, device="cpu")  # type: ignore[arg-type]
    result = trainer.fit()
    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())  # FSDP2 turned them into DTensors
    if rank == 0:
        _write_result(Path(run_dir), {"losses": result.losses, "eval": result.eval_history, "sharded": sharded,
                                      "resumed_from": result.resumed_from, "tokens": result.tokens_seen})
    from slimtune.train.distributed import destroy

    destroy()


def _write_result(run_dir: Path, record: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "result.json", "w", encoding="utf-8") as f:
        json.dump(record, f)
