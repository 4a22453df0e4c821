"""The glue between a live training run and a CheckpointData: capture everything (gathering from every rank
where the state is per-process or sharded), and put it all back."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from slimtune.errors import CheckpointError, TrainingError
from slimtune.train.checkpoint import CheckpointData, capture_rng, restore_rng
from slimtune.train.distributed import DistEnv, all_gather_objects
from slimtune.train.optim import like, load_optimizer_state, named_trainable, optimizer_state, to_full
from slimtune.train.schedule import Schedule

log = logging.getLogger(__name__)


def gather_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable parameters by name (a collective under FSDP2: call on every rank)."""
    return {name: to_full(p) for name, p in named_trainable(model)}


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TrainingError(f"refusing to save {what}: {len(bad)} tensor(s) hold NaN/Inf ({', '.join(bad[:5])}); "
                            "lower the learning rate or enable the NaN guard (nan_guard)")


def capture(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, step: int,
            state: dict[str, Any], env: DistEnv) -> CheckpointData:
    """A checkpoint of the run as it stands (call on every rank; only rank 0's result is meant to be written)."""
    trainable = gather_trainable(model)
    check_finite(trainable, "a checkpoint")
    names = {id(p): n for n, p in named_trainable(model)}
    opt_tensors, opt_meta = optimizer_state(optimizer, names)
    rng_t, rng_m = capture_rng()
    per_rank = all_gather_objects(({k: v.tolist() for k, v in rng_t.items()}, rng_m), env)
    rng_tensors: dict[str, torch.Tensor] = {}
    rng_meta: dict[str, Any] = {"world_size": env.world_size}
    for rank, (tensors, meta) in enumerate(per_rank):
        for key, values in tensors.items():
            rng_tensors[f"rank{rank}/{key}"] = torch.tensor(values, dtype=rng_t[key].dtype)
        rng_meta[f"rank{rank}"] = meta
    return CheckpointData(step=step, trainable=trainable, optimizer_tensors=opt_tensors, optimizer_meta=opt_meta,
                          scheduler=schedule.state_dict(), rng_tensors=rng_tensors, rng_meta=rng_meta, state=state)


def restore(data: CheckpointData, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
            env: DistEnv) -> None:
    """Put weights, optimizer, schedule and this rank's RNG states back; raises if they do not fit."""
    params = dict(named_trainable(model))
    missing, unexpected = sorted(set(params) - set(data.trainable)), sorted(set(data.trainable) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint does not fit this model: missing {missing[:5]} "
                              f"unexpected {unexpected[:5]}; resume with the same base model and adapter config")
    with torch.no_grad():
        for name, p in params.items():
            saved = data.trainable[name]
            if tuple(saved.shape) != tuple(p.shape):
                raise CheckpointError(f"checkpoint tensor {name} has shape {tuple(saved.shape)}, the model "
                                      f"{tuple(p.shape)}; the adapter config differs")
            p.copy_(like(saved, p))
    names = {id(p): n for n, p in params.items()}
    load_optimizer_state(optimizer, names, data.optimizer_tensors, data.optimizer_meta)
    schedule.load_state_dict(data.scheduler)
    _restore_rng(data, env)


def _restore_rng(data: CheckpointData, env: DistEnv) -> None:
    saved_world = int(data.rng_meta.get("world_size", 1))
    rank = env.rank if saved_world == env.world_size else 0
    if saved_world != env.world_size:
        log.info("checkpoint was written by %d process(es), resuming with %d: every rank takes rank 0's RNG state",
                 saved_world, env.world_size)
    prefix = f"rank{rank}/"
    tensors = {k[len(prefix):]: v for k, v in data.rng_tensors.items() if k.startswith(prefix)}
    restore_rng(tensors, data.rng_meta[f"rank{rank}"])


def json_float(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
