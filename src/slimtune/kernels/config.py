"""Run-time choice between the fast paths and their plain-torch references.

The mode comes from ``use_fast(True | False | None)`` when it was called, else from the environment variable
``SLIMTUNE_KERNELS`` (``auto``, ``fast`` or ``reference``; default ``auto``). ``auto`` takes the fast paths
of the LoRA and DoRA layers and of the chunked LM-head loss everywhere, and the mixed-adapter path on a CUDA
device or where no gradient is being recorded. In CPU training of SmolLM2-135M the fast LoRA layers measured
0.84x the reference path's step time and the fast DoRA layers 0.75x (fifth session; before the accumulating
products ran in place, LoRA's measured 1.03x and the reference was CPU training's default). Under autocast the
paths run in autocast's dtype (``autocast_dtype``). ``fast`` takes every path everywhere it applies (they are
torch ops under custom autograd, so they also run on CPU, which is how CPU tests reach them).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

from slimtune.errors import ConfigError

Mode = Literal["auto", "fast", "reference"]
_MODES: tuple[Mode, ...] = ("auto", "fast", "reference")
_forced: Mode | None = None


def mode() -> Mode:
    """The mode in force: the one set by ``use_fast``, else ``SLIMTUNE_KERNELS``, else ``auto``."""
    if _forced is not None:
        return _forced
    if torch.compiler.is_compiling():  # read the environment when the graph is traced, not inside it
        return _traced_mode
    value = os.environ.get("SLIMTUNE_KERNELS", "auto").strip().lower() or "auto"
    if value not in _MODES:
        raise ConfigError(f"SLIMTUNE_KERNELS must be one of {list(_MODES)}, got {value!r}")
    return value  # type: ignore[return-value]


_traced_mode: Mode = "auto"


def use_fast(flag: bool | None) -> None:
    """Force the fast paths on (True), off (False), or go back to the environment / auto choice (None)."""
    global _forced
    if flag is not None and not isinstance(flag, bool):
        raise ConfigError(f"use_fast takes True, False or None, got {flag!r}")
    _forced = None if flag is None else ("fast" if flag else "reference")


@contextlib.contextmanager
def fast_paths(flag: bool | None) -> Iterator[None]:
    """``use_fast(flag)`` inside a ``with`` block, restoring the previous choice after it."""
    global _forced
    before = _forced
    use_fast(flag)
    try:
        yield
    finally:
        _forced = before


def enabled(x: torch.Tensor, kind: str = "") -> bool:
    """Whether a fast path of ``kind`` ("lora", "dora", "mixed", "loss") should handle an input like ``x``
    now. In ``auto`` every kind but "mixed" is taken on the CPU too, in training as well: the chunked LM-head
    loss holds a few hundred MiB less at the step's peak than float32 logits and torch's cross-entropy, and the
    layers' fused products save (N, out) passes. Mixed-adapter training on the CPU keeps the reference."""
    chosen = mode()
    if chosen == "reference":
        return False
    return chosen == "fast" or kind != "mixed" or x.is_cuda or not torch.is_grad_enabled()


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast computes products in for ``x``'s device, None where autocast is off.

    The fast paths run in one dtype: under autocast their callers cast the inputs and weights to this dtype
    (differentiably, so float32 adapters get float32 gradients, as under autocast itself) and run the path with
    autocast off, which is what autocast does to each product of the unfused chain."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


_dora_recompute = os.environ.get("SLIMTUNE_DORA_RECOMPUTE", "0") not in ("", "0", "false", "False")


def dora_recompute() -> bool:
    """Whether DoRA's fast path redoes the base matmul in backward (less memory) instead of reusing its output."""
    return _dora_recompute


def set_dora_recompute(flag: bool) -> None:
    """Choose DoRA's trade: True saves (N, out) per layer for one more matmul in backward."""
    global _dora_recompute
    _dora_recompute = bool(flag)
