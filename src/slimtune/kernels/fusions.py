"""Fused elementwise blocks of Llama-style decoders: RMSNorm and the SwiGLU product, one kernel each way.

``fuse_model(model)`` rebinds the ``forward`` of every recognised RMSNorm and gated-MLP module (Llama, Mistral,
Qwen2/3 class names; SiLU gate) to the same math run through ``torch.compile`` on CUDA, where Inductor writes
one Triton kernel for the forward and one for the backward and saves only the inputs (the unfused module chain
runs about seven kernels each way and keeps float32 copies). Elsewhere, or if compiling fails, the plain torch
expressions run. The module tree, parameters and state dict are untouched; ``unfuse_model`` undoes it.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face Llama's RMSNorm: normalise in float32, cast back, then scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    return F.silu(gate) * up


class _Fused:
    """A function run compiled on CUDA (falling back, for good, to eager if compiling fails)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.compiled: Callable[..., torch.Tensor] | None = None
        self.failed = False

    def __call__(self, *args: Any) -> torch.Tensor:
        first = args[0]
        if not first.is_cuda or self.failed:
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=False, fullgraph=True)
        try:
            return self.compiled(*args)
        except Exception as err:  # an unavailable compiler must not stop training: run the same math eagerly
            log.warning("slimtune.kernels: compiling %s failed (%s); using eager torch", self.fn.__name__, err)
            self.failed = True
            return self.fn(*args)


fused_rms_norm = _Fused(rms_norm)
fused_swiglu = _Fused(swiglu)


def _norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return fused_rms_norm(hidden_states, self.weight, float(self.variance_epsilon))  # type: ignore[arg-type]


def _mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(fused_swiglu(self.gate_proj(x), self.up_proj(x)))  # type: ignore[operator]


def _fusable(module: nn.Module) -> Callable[..., torch.Tensor] | None:
    name = type(module).__name__
    if name in NORMS and hasattr(module, "variance_epsilon") and isinstance(getattr(module, "weight", None),
                                                                           torch.Tensor):
        return _norm_forward
    config = getattr(module, "config", None)
    if name in MLPS and getattr(config, "hidden_act", None) == "silu" and all(
            hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
        return _mlp_forward
    return None


def fuse_model(model: nn.Module) -> int:
    """Rebind the forward of the model's RMSNorm and SwiGLU MLP modules to the fused ones; returns how many."""
    count = 0
    for module in model.modules():
        forward = _fusable(module)
        if forward is not None and "forward" not in vars(module):
            module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
            count += 1
    return count


def compile_blocks(model: nn.Module, **options: Any) -> int:
    """Compile every transformer block (modules whose class name ends in ``DecoderLayer``) in place with
    ``torch.compile`` (``nn.Module.compile``), LoRA / DoRA layers and their custom autograd included: one
    compiled call per block instead of hundreds of small kernels launched from Python, which is what bounds a
    LoRA training step when the GPU outruns the host. Returns how many blocks; ``options`` go to torch.compile."""
    count = 0
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            module.compile(**{"dynamic": False, **options})
            count += 1
    return count


def unfuse_model(model: nn.Module) -> int:
    """Undo ``fuse_model``; returns how many modules got their class's forward back."""
    count = 0
    for module in model.modules():
        bound = vars(module).get("forward")
        if isinstance(bound, types.MethodType) and bound.__func__ in (_norm_forward, _mlp_forward):
            del module.forward
            count += 1
    return count
