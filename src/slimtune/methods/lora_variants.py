"""The math of LoRA's variants: DoRA's weight-decomposed update (Liu et al. 2024) and the PiSSA / OLoRA
starting points (Meng et al. 2024; Büyükakyüz 2024), as pure functions of tensors.

All weights here are in (out, in) orientation, float32."""

from __future__ import annotations

import torch
from torch import nn


class Magnitude(nn.Module):
    """DoRA's per-output-channel magnitude; a module so that PEFT's key ``lora_magnitude_vector.weight`` fits."""

    def __init__(self, norm: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(norm)


def row_norm(weight: torch.Tensor, lora_weight: torch.Tensor, scaling: float) -> torch.Tensor:
    """||W + s * B A|| per output row, the denominator DoRA treats as a constant (section 4.3)."""
    return torch.linalg.norm(weight + scaling * lora_weight, dim=1)  # (out,)


def dora_delta(x_lora: torch.Tensor, base_no_bias: torch.Tensor, magnitude: torch.Tensor,
               norm: torch.Tensor, scaling: float) -> torch.Tensor:
    """What DoRA adds to the base output: (m/||.|| - 1) * W x + m/||.|| * s * B A x."""
    scale = (magnitude / norm).view(*([1] * (base_no_bias.dim() - 1)), -1)  # (1, ..., out)
    return (scale - 1) * base_no_bias + scale * x_lora * scaling


def dora_merge_delta(weight: torch.Tensor, lora_weight: torch.Tensor, magnitude: torch.Tensor,
                     scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(what merging adds to W, the per-row scale m/||W + sBA|| to keep for unmerging)."""
    combined = weight + scaling * lora_weight
    scale = magnitude / torch.linalg.norm(combined, dim=1)
    return scale[:, None] * combined - weight, scale


def pissa_init(weight: torch.Tensor, r: int, scaling: float, niter: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A0 (r, in), B0 (out, r) from the top-r singular triplets, so that s * B0 @ A0 is W's best rank-r part."""
    if niter is None:
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
    else:
        u, s, v = torch.svd_lowrank(weight, q=r, niter=niter)
        vh = v.T
    root = torch.sqrt(s / scaling)
    return root[:, None] * vh, u * root[None, :]


def olora_init(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A0 = R[:r] (r, in), B0 = Q[:, :r] (out, r) from the QR decomposition of W, as PEFT's OLoRA."""
    q, rr = torch.linalg.qr(weight)
    return rr[:r].contiguous(), q[:, :r].contiguous()
