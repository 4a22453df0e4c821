"""TrainConfig: every knob of slimtune's trainer in one frozen, validated dataclass (also the ``train:``
section of a recipe)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from slimtune.errors import ConfigError

ScheduleName = Literal["constant", "linear", "cosine"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: length, batch, optimizer, schedule, precision, evaluation, checkpoints, guards."""

    steps: int | None = None
    """Number of optimizer steps (max_steps). Give either steps or epochs; steps wins when both are set."""
    epochs: float | None = None
    """Passes over the training data (a partial last global batch of each epoch is dropped)."""
    batch_size: int = 8
    """Examples per micro-batch per process; the global batch is batch_size * world_size * grad_accum."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimizer step."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: ScheduleName = "linear"
    """Learning-rate shape after warm-up: "constant", "linear" (to 0 at the last step) or "cosine" (to 0)."""
    warmup_steps: int | None = None
    """Linear warm-up from 0 over this many steps; overrides warmup_ratio."""
    warmup_ratio: float = 0.0
    """Warm-up as a fraction of the total steps, used when warmup_steps is not set."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; None disables clipping (the norm is still logged)."""
    precision: PrecisionName = "auto"
    """"auto": bf16 autocast on a CUDA device that supports it, else fp32. bf16/fp16 autocast apply on CUDA
    only; on CPU training always runs in float32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (non-reentrant; works with a frozen base)."""
    compile: bool | None = None
    """Put every transformer block through torch.compile (``kernels.compile_blocks``, adapters included).
    None (auto): on for a single-process run on a CUDA device where Triton is installed, off elsewhere; the
    first steps (and the first of each new padded length, until shapes go dynamic) pay the compile time."""
    eval_every: int | None = None
    """Evaluate every N steps (and at the end) when eval data is given; None: only at the end."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without a lower loss on the first eval set; None disables it."""
    seed: int = 0
    """Seeds python, numpy and torch, and the per-epoch data permutation."""
    nan_guard: int = 3
    """A step with a non-finite loss or gradient is skipped; this many consecutive ones stop training with
    TrainingError. 0 stops at the first one."""
    checkpoint_every: int | None = None
    """Write a resumable checkpoint every N steps (needs a run_dir); None: no intermediate checkpoints."""
    keep_last: int = 2
    """How many complete checkpoints to keep; older ones are deleted."""
    log_every: int = 10
    """Plain-text progress line every N steps (when stderr is not a terminal)."""
    loraplus_lr_ratio: float | None = None
    """LoRA+ (Hayou et al. 2024): parameters in the "B" role train with lr * ratio; None disables it."""

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        self._validate_lengths()
        self._validate_optimizer()
        self._validate_intervals()

    def _validate_lengths(self) -> None:
        if self.steps is None and self.epochs is None:
            raise ConfigError("TrainConfig needs steps or epochs; got neither (e.g. steps=100 or epochs=1)")
        _positive_int("steps", self.steps, optional=True)
        if self.epochs is not None and (not _is_number(self.epochs) or self.epochs <= 0):
            raise ConfigError(f"TrainConfig.epochs must be a positive number, got {self.epochs!r}")
        _positive_int("batch_size", self.batch_size)
        _positive_int("grad_accum", self.grad_accum)

    def _validate_optimizer(self) -> None:
        if not _is_number(self.lr) or not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        betas_ok = len(self.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in self.betas)
        if not betas_ok:
            raise ConfigError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not _is_number(self.eps) or self.eps <= 0:
            raise ConfigError(f"TrainConfig.eps must be a positive number, got {self.eps!r}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _positive_int("warmup_steps", self.warmup_steps, optional=True, zero_ok=True)
        if not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise ConfigError(f"TrainConfig.max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        if self.loraplus_lr_ratio is not None and (not _is_number(self.loraplus_lr_ratio)
                                                   or self.loraplus_lr_ratio <= 0):
            raise ConfigError(f"TrainConfig.loraplus_lr_ratio must be positive or None, got {self.loraplus_lr_ratio!r}")

    def _validate_intervals(self) -> None:
        for name in ("eval_every", "early_stopping_patience", "checkpoint_every"):
            _positive_int(name, getattr(self, name), optional=True)
        _positive_int("keep_last", self.keep_last)
        _positive_int("log_every", self.log_every)
        _positive_int("nan_guard", self.nan_guard, zero_ok=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"TrainConfig.seed must be an integer, got {self.seed!r}")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise ConfigError(f"TrainConfig.compile must be true, false or null (auto), got {self.compile!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(f"TrainConfig.gradient_checkpointing must be true or false, got "
                              f"{self.gradient_checkpointing!r}")

    def warmup_for(self, total_steps: int) -> int:
        """The warm-up length in steps for a run of ``total_steps``."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return int(self.warmup_ratio * total_steps)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (a recipe's ``train:`` section); unknown keys are an error listing the known."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown train option(s) {unknown}; known options: {', '.join(known)}")
        return cls(**data)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(name: str, value: object, *, optional: bool = False, zero_ok: bool = False) -> None:
    if value is None and optional:
        return
    low = 0 if zero_ok else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "a non-negative" if zero_ok else "a positive"
        raise ConfigError(f"TrainConfig.{name} must be {kind} integer{' or None' if optional else ''}, got {value!r}")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"TrainConfig.{name} must be one of {', '.join(choices)}; got {value!r}")
