"""Strict state loading by set arithmetic on keys: nothing missing, nothing unexpected, every shape fits."""

from __future__ import annotations

import torch

from slimtune.errors import KeyMismatchError


def check_keys(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> None:
    """Raise KeyMismatchError naming every missing, unexpected and mis-shaped key; return when they fit."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
                   for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_clip(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_clip(unexpected)}")
    if wrong:
        parts.append(f"shape mismatches ({len(wrong)}): {_clip(wrong)}")
    raise KeyMismatchError(
        "adapter weights do not fit this model: " + "; ".join(parts)
        + ". Check that the adapter was trained on this base model and that its config is intact."
    )


def _clip(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")
