"""The loss of one batch and the token-weighted evaluation of a dataset (sharded over ranks under DDP)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from slimtune.errors import TrainingError
from slimtune.kernels.loss import lm_loss
from slimtune.train.distributed import DistEnv, all_reduce_sum

IGNORE_INDEX = -100


def target_count(batch: dict[str, Tensor]) -> int:
    """How many targets a batch's mean loss averages over: labels after the causal shift for (B, T) labels,
    one per row for (B,) labels (classification), else one per row."""
    labels = batch.get("labels")
    if isinstance(labels, Tensor) and labels.ndim >= 2:
        return int((labels[:, 1:] != IGNORE_INDEX).sum())
    if isinstance(labels, Tensor):
        return int(labels.shape[0])
    first = next((v for v in batch.values() if isinstance(v, Tensor)), None)
    return int(first.shape[0]) if first is not None else 0


def forward_loss(model: nn.Module, batch: dict[str, Tensor],
                 loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor] | None, *, direct: bool = True) -> Tensor:
    """The batch's mean loss: ``loss_fn(model, batch)``; else, for a causal LM whose submodules may be called
    ``direct`` (not under DDP / FSDP, whose hooks run on the wrapper's forward), ``kernels.lm_loss`` (the head
    on target positions only: the same loss for less work); else the model's own ``outputs.loss``."""
    if loss_fn is not None:
        return loss_fn(model, batch)
    if direct:
        targeted = lm_loss(model, batch)
        if targeted is not None:
            return targeted
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, dict):
        loss = out.get("loss")
    if not isinstance(loss, Tensor):
        raise TrainingError(f"{type(model).__name__} returned no loss for a batch with keys {sorted(batch)}; "
                            "give 'labels' in the batch, or pass loss_fn= to the Trainer")
    return loss


def evaluate_model(model: nn.Module, data: Sequence[Any], collate_fn: Callable[[list[Any]], Any],
                   batch_size: int, env: DistEnv, precision: Any, loss_fn: Any, to_device: Callable[[Any], Any],
                   *, shard: bool = True, direct: bool = True) -> dict[str, float]:
    """{"loss": token-weighted mean loss, "perplexity": exp(loss), "targets": count} over ``data``."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    starts = range(0, len(data), batch_size)
    mine = [s for j, s in enumerate(starts) if not shard or j % env.world_size == env.rank]
    try:
        with torch.no_grad():
            for start in mine:
                batch = to_device(collate_fn([data[i] for i in range(start, min(start + batch_size, len(data)))]))
                count = target_count(batch)
                if count == 0:
                    continue
                with precision.autocast():
                    loss = forward_loss(model, batch, loss_fn, direct=direct)
                sums += torch.tensor([float(loss) * count, float(count)], dtype=torch.float64)
    finally:
        model.train(was_training)
    if shard:
        sums = all_reduce_sum(sums, env)
    loss_value = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
    return {"loss": loss_value, "perplexity": math.exp(min(loss_value, 700.0)) if math.isfinite(loss_value)
            else float("nan"), "targets": float(sums[1])}
