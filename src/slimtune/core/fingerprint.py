"""A fingerprint of a base model's weights: the same checkpoint gives the same hex string in any dtype or
device, a different checkpoint a different one. It hashes every tensor's name and shape and a strided
sample of its values at bfloat16 precision, so it costs milliseconds rather than a pass over all bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

_SAMPLE = 4096


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        if flat.numel() > _SAMPLE:
            # integer arithmetic: a float linspace rounds past the end for tensors of tens of millions
            idx = torch.arange(_SAMPLE, device=flat.device, dtype=torch.int64) * (flat.numel() - 1) // (_SAMPLE - 1)
            flat = flat.index_select(0, idx)
        sample = flat.to(torch.bfloat16).float().cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(sample)
    return digest.hexdigest()
