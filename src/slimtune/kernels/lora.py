"""Fast LoRA and DoRA linears: the base matmul and the low-rank part in few kernels, under custom autograd.

``y = x W^T + b + s (x A^T) B^T``. Forward: ``x A^T`` once (N, r), then the base matmul accumulates onto the
small product (cuBLAS's ``C`` input), so the (N, out) low-rank output is never added in a separate pass.
Saved for backward: ``x`` (which the next op usually keeps anyway) and ``s x A^T`` (N, r); W is frozen, so no
grad_W. Backward: ``gB = g^T (s xA)``, ``u = s g B`` (N, r), ``gA = u^T x``, ``grad_x = g W + u A`` (one
accumulating matmul).

DoRA adds ``y = (m / ||W + s B A||_row) * z + b`` with ``z = x W^T + s x A^T B^T``. The row norm is computed
once per call from W's row norms and two skinny products (no (out, in) sum formed), and saved for backward;
the per-row scale is folded into W and B (weight-sized, not activation-sized passes). The magnitude's gradient
needs ``z``: by default it comes from the output (which the next op often keeps anyway: the gated MLP's SiLU
and product), else from one more base matmul in backward (``recompute=True``).
"""

from __future__ import annotations

from typing import Any

import torch

_TINY = 1e-12


def _lora_out(x2: torch.Tensor, xd2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x W^T + b + s xd A^T B^T, s xd A^T); inputs already flattened to (N, in)."""
    xa = torch.mm(xd2, lora_a.t()).mul_(scaling)  # (N, r)
    low = torch.mm(xa, lora_b.t()) if bias is None else torch.addmm(bias, xa, lora_b.t())  # (N, out)
    return torch.addmm(low, x2, weight.t()), xa


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


class _LoraLinear(torch.autograd.Function):
    """On flattened (N, in) inputs; ``xd`` is the same tensor as ``x`` when dropout is the identity."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, xd: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
        y, xa = _lora_out(x, xd, weight, bias, lora_a, lora_b, scaling)
        ctx.save_for_backward(xd, xa, weight, lora_a, lora_b)
        ctx.same, ctx.scaling = xd is x, scaling
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xd, xa, weight, lora_a, lora_b = ctx.saved_tensors
        need_x, need_xd, _, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        g = grad.contiguous()  # (N, out)
        u = torch.mm(g, lora_b).mul_(ctx.scaling)  # (N, r)
        grad_a = torch.mm(u.t(), xd) if need_a else None  # (r, in)
        grad_b = torch.mm(g.t(), xa) if need_b else None  # (out, r)
        grad_bias = g.sum(0) if need_bias else None
        grad_x = grad_xd = None
        if ctx.same:  # x and xd are one input: autograd sums both slots, so give the whole gradient once
            grad_x = torch.addmm(torch.mm(u, lora_a), g, weight) if need_x else None
        else:
            grad_x = torch.mm(g, weight) if need_x else None
            grad_xd = torch.mm(u, lora_a) if need_xd else None
        return grad_x, grad_xd, None, grad_bias, grad_a, grad_b, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, xd: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b + scaling * (xd A^T) B^T`` for ``x`` (..., in), W (out, in), A (r, in), B (out, r).

    ``xd`` is the adapter's input after dropout (default: ``x`` itself, and then nothing extra is saved).
    Without gradients it runs the same three products with no autograd bookkeeping.
    """
    x2 = _flat(x)
    xd2 = x2 if xd is None or xd is x else _flat(xd)
    tensors = (x2, xd2, weight, bias, lora_a, lora_b)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        y = _LoraLinear.apply(x2, xd2, weight, bias, lora_a, lora_b, scaling)
    else:
        y = _lora_out(x2, xd2, weight, bias, lora_a, lora_b, scaling)[0]
    return y.view(*x.shape[:-1], y.shape[-1])


@torch.no_grad()
def dora_norm(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """||W + s B A|| per output row in (at least) float32, as sqrt(|W|^2 + 2 s <W, BA> + s^2 |BA|^2) row-wise.

    Reads W twice (its row norms and the skinny product W A^T) and never forms the (out, in) sum.
    """
    acc = torch.promote_types(weight.dtype, torch.float32)
    wsq = torch.linalg.vector_norm(weight, dim=1, dtype=acc).square()  # (out,)
    a, b = lora_a.to(acc), lora_b.to(acc)
    wa = torch.mm(weight, lora_a.t()).to(acc)  # (out, r)
    cross = (b * wa).sum(1)
    ba_sq = (torch.mm(b, torch.mm(a, a.t())) * b).sum(1)  # |(BA)_j|^2 = b_j (A A^T) b_j^T
    return (wsq + 2.0 * scaling * cross + scaling * scaling * ba_sq).clamp_min(_TINY).sqrt()


def _dora_out(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
              lora_b: torch.Tensor, scale: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale * (x W^T + s x A^T B^T) + b, x A^T) with the per-row scale folded into W and B, so no (N, out)
    pass is spent on it: ``diag(scale) W`` is smaller than the activations whenever N > in."""
    xa = torch.mm(x, lora_a.t())  # (N, r)
    b_scaled = lora_b * (scale * scaling)[:, None]  # (out, r)
    low = torch.mm(xa, b_scaled.t()) if bias is None else torch.addmm(bias, xa, b_scaled.t())  # (N, out)
    return torch.addmm(low, x, (weight * scale[:, None]).t()), xa


class _DoraLinear(torch.autograd.Function):
    """On flattened (N, in) inputs; the magnitude's gradient sum_n g (y - b) / (scale norm) reuses the output."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, magnitude: torch.Tensor, scaling: float, recompute: bool) -> torch.Tensor:
        norm = dora_norm(weight, lora_a, lora_b, scaling)  # (out,) float32, a constant (DoRA section 4.3)
        scale = (magnitude.to(norm.dtype) / norm).to(x.dtype)  # (out,)
        y, xa = _dora_out(x, weight, bias, lora_a, lora_b, scale, scaling)
        ctx.save_for_backward(x, xa, weight, bias, lora_a, lora_b, norm, scale, None if recompute else y)
        ctx.scaling, ctx.recompute = scaling, recompute
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, xa, weight, bias, lora_a, lora_b, norm, scale, kept = ctx.saved_tensors
        need_x, _, need_bias, need_a, need_b, need_m, _, _ = ctx.needs_input_grad
        g = grad.contiguous()  # (N, out)
        s = ctx.scaling
        grad_m = None
        if need_m:
            y = _dora_out(x, weight, bias, lora_a, lora_b, scale, s)[0] if ctx.recompute else kept
            out = y if bias is None else y - bias
            denom = scale.to(norm.dtype) * norm  # = m up to rounding; a zero scale gets no gradient
            gy = (g * out).sum(0, dtype=norm.dtype)
            grad_m = torch.where(denom != 0, gy / denom, 0.0).to(scale.dtype)
        u = torch.mm(g, lora_b * (scale * s)[:, None])  # (N, r) = s (g diag(scale)) B
        grad_a = torch.mm(u.t(), x) if need_a else None  # (r, in)
        grad_b = torch.mm(g.t(), xa).mul_((scale * s)[:, None]) if need_b else None  # (out, r)
        grad_x = torch.addmm(torch.mm(u, lora_a), g, weight * scale[:, None]) if need_x else None
        grad_bias = g.sum(0) if need_bias else None
        return grad_x, None, grad_bias, grad_a, grad_b, grad_m, None, None


def dora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, magnitude: torch.Tensor, scaling: float, recompute: bool = False) -> torch.Tensor:
    """DoRA's output ``m / ||W + s B A||_row * (x W^T + s x A^T B^T) + b`` (no dropout on the adapter input).

    ``recompute=True`` keeps nothing of size (N, out) for the magnitude's gradient and redoes the base matmul
    in backward instead; the default recovers it from the output.
    """
    x2 = _flat(x)
    tensors = (x2, weight, bias, lora_a, lora_b, magnitude)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        y = _DoraLinear.apply(x2, weight, bias, lora_a, lora_b, magnitude, scaling, recompute)
    else:
        norm = dora_norm(weight, lora_a, lora_b, scaling)
        y = _dora_out(x2, weight, bias, lora_a, lora_b, (magnitude.to(norm.dtype) / norm).to(x.dtype), scaling)[0]
    return y.view(*x.shape[:-1], y.shape[-1])
