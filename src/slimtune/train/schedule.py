"""Learning-rate schedules with linear warm-up: a pure function of the step, so resuming needs only the step.

Step ``s`` (0-based) is the optimizer update about to run. During warm-up the factor is ``s / warmup``
(0 at the first step, as in Hugging Face transformers); afterwards it is 1 ("constant"), falls linearly to 0
at ``total`` ("linear"), or follows half a cosine to 0 ("cosine").
"""

from __future__ import annotations

import math
from typing import Any

import torch

from slimtune.errors import CheckpointError, ConfigError

_KINDS = ("constant", "linear", "cosine")


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """The multiplier of the peak learning rate at 0-based ``step`` of ``total``."""
    if kind not in _KINDS:
        raise ConfigError(f"schedule must be one of {', '.join(_KINDS)}; got {kind!r}")
    if warmup > 0 and step < warmup:
        return step / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """Sets every optimizer group's lr to its own base lr times ``lr_factor``; state is the step only."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup: int, kind: str) -> None:
        lr_factor(0, total, warmup, kind)  # validates kind
        self.optimizer = optimizer
        self.total, self.warmup, self.kind = total, warmup, kind
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = base
        self.step_index = 0
        self.apply()

    def apply(self) -> None:
        factor = lr_factor(self.step_index, self.total, self.warmup, self.kind)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step(self) -> None:
        self.step_index += 1
        self.apply()

    @property
    def last_lr(self) -> float:
        """The learning rate of the first group (the base group) as it stands now."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_index, "total": self.total, "warmup": self.warmup, "kind": self.kind,
                "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state.get("base_lrs", [])) != len(self.base_lrs):
            raise CheckpointError(f"checkpoint schedule has {len(state.get('base_lrs', []))} parameter groups, "
                                  f"this run has {len(self.base_lrs)}; the optimizer set-up differs")
        self.step_index = int(state["step"])
        self.apply()
