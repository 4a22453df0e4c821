"""Fast LoRA and DoRA linears: the base matmul and the low-rank part in few kernels, under custom autograd.

``y = x W^T + b + s (x A^T) B^T``. Forward: ``x A^T`` once (N, r), then the base matmul accumulates onto the
small product (cuBLAS's ``C`` input), so the (N, out) low-rank output is never added in a separate pass.
Saved for backward: ``x`` (which the next op usually keeps anyway) and ``s x A^T`` (N, r); W is frozen, so no
grad_W. The accumulating products run in place (``addmm_``) when eager: the out-of-place ``torch.addmm(C, ...)``
copies C into a new output first, one (N, out) copy per product (the H200 profile showed two per layer and step).
Backward: ``gB = g^T (s xA)``, ``u = s g B`` (N, r), ``gA = u^T x``, ``grad_x = g W + u A`` (one accumulating
matmul).

DoRA adds ``y = (m / ||W + s B A||_row) * z + b`` with ``z = x W^T + s x A^T B^T``. The row norm is computed
once per call from W's row norms and two skinny products (no (out, in) sum formed), and saved for backward;
the per-row scale is folded into W and B (weight-sized, not activation-sized passes). The magnitude's gradient
needs ``z``: by default it comes from the output (which the next op often keeps anyway: the gated MLP's SiLU
and product), else from one more base matmul in backward (``recompute=True``).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

_TINY = 1e-12


def _lora_out(x2: torch.Tensor, xd2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x W^T + b + s xd A^T B^T, s xd A^T); inputs already flattened to (N, in)."""
    xa = torch.mm(xd2, lora_a.t()).mul_(scaling)  # (N, r)
    low = torch.mm(xa, lora_b.t()) if bias is None else torch.addmm(bias, xa, lora_b.t())  # (N, out)
    return _accumulate(low, x2, weight), xa


def _accumulate(low: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``low + x W^T``: in place when eager (the out-of-place ``torch.addmm(C, ...)`` copies C to a new output
    first). Out of place under torch.compile, which plans its own buffers, and where the in-place form inside a
    custom autograd forward made torch 2.11's Inductor (CUDA) return zero gradients for every input."""
    if torch.compiler.is_compiling():
        return torch.addmm(low, x, weight.t())
    return low.addmm_(x, weight.t())


class _LoraLinear(torch.autograd.Function):
    """On flattened (N, in) inputs; ``xd`` is None when dropout is the identity (the adapter reads ``x``)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        xd: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        y, xa = _lora_out(x, x if xd is None else xd, weight, bias, lora_a, lora_b, scaling)
        ctx.save_for_backward(x if xd is None else xd, xa, weight, lora_a, lora_b)
        ctx.same, ctx.scaling = xd is None, scaling
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
        if ctx.same:  # the adapter read x itself: its gradient joins the base's
            grad_x = torch.mm(u, lora_a).addmm_(g, weight) if need_x else None
        else:
            grad_x = torch.mm(g, weight) if need_x else None
            grad_xd = torch.mm(u, lora_a) if need_xd else None
        return grad_x, grad_xd, None, grad_bias, grad_a, grad_b, None


def merge_pays(rows: int, in_features: int, out_features: int) -> bool:
    """Whether forming ``W + s B A`` for one call moves less memory than applying the adapter beside W.

    Beside W the adapter reads the input once more and writes and reads an (N, out) product: about
    N (in + 2 out) elements. Merging writes and reads one (out, in) weight: 2 out in. Prefill-sized batches
    (N in the thousands) come out on the merged side, decoding steps (N = batch) on the other."""
    return 2 * in_features * out_features < rows * (in_features + 2 * out_features)


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, xd: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b + scaling * (xd A^T) B^T`` for ``x`` (..., in), W (out, in), A (r, in), B (out, r).

    ``xd`` is the adapter's input after dropout (default: ``x`` itself, and then nothing extra is saved).
    Without gradients it runs the same three products with no autograd bookkeeping, or, where ``merge_pays``
    (many rows, no dropout), one product with ``W + s B A`` formed for this call only: the weights stay as
    they are, and the result is what merged inference in the weights' dtype gives.
    """
    x2 = x.reshape(-1, x.shape[-1])
    xd2 = x2 if xd is None or xd is x else xd.reshape(-1, xd.shape[-1])
    if torch.is_grad_enabled() and (x2.requires_grad or xd2.requires_grad or lora_a.requires_grad
                                    or lora_b.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        y = _LoraLinear.apply(x2, None if xd2 is x2 else xd2, weight, bias, lora_a, lora_b, scaling)
    elif xd2 is x2 and merge_pays(x2.shape[0], weight.shape[1], weight.shape[0]):
        y = F.linear(x2, torch.addmm(weight, lora_b, lora_a, alpha=scaling), bias)
    else:
        y = _lora_out(x2, xd2, weight, bias, lora_a, lora_b, scaling)[0]
    return y.view(*x.shape[:-1], y.shape[-1])


def _weight_sq(weight: torch.Tensor, acc: torch.dtype, cache: dict | None) -> torch.Tensor:
    """|W|^2 per row; W is frozen, so a caller's ``cache`` keeps it while W's storage and version stay."""
    if cache is None or torch.compiler.is_compiling() or weight.is_inference():  # (no version to check against)
        return torch.linalg.vector_norm(weight, dim=1, dtype=acc).square()
    key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape), acc)
    held = cache.get("weight")
    if cache.get("key") != key or held is None or held() is not weight:  # (a freed weight's memory may be reused)
        cache["key"], cache["weight"] = key, weakref.ref(weight)
        cache["value"] = torch.linalg.vector_norm(weight, dim=1, dtype=acc).square_()
    return cache["value"]


def dora_norm(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float,
              cache: dict | None = None) -> torch.Tensor:
    """||W + s B A|| per output row in (at least) float32, as sqrt(|W|^2 + b_j . (2 s (W A^T)_j + s^2 (B A A^T)_j)).

    Reads W once (the skinny product W A^T; its row norms are kept in ``cache`` between calls) and never forms
    the (out, in) sum; the rest works on (out, r) tensors in a handful of kernels. A constant: no gradient.
    """
    if torch.is_grad_enabled():
        with torch.no_grad():
            return dora_norm(weight, lora_a, lora_b, scaling, cache)
    acc = torch.promote_types(weight.dtype, torch.float32)
    a, b = lora_a.to(acc), lora_b.to(acc)
    wa = torch.mm(weight, lora_a.t()).to(acc)  # (out, r)
    q = torch.addmm(wa, b, torch.mm(a, a.t()), beta=2.0 * scaling, alpha=scaling * scaling)  # 2s WA + s^2 B AA^T
    return (torch.linalg.vecdot(b, q) + _weight_sq(weight, acc, cache)).clamp_min(_TINY).sqrt()


def _dora_scales(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, magnitude: torch.Tensor,
                 scaling: float, dtype: torch.dtype, cache: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(m / ||W + s B A|| in ``dtype``, 1 / (that scale times the norm) in float32, zero where the scale is)."""
    norm = dora_norm(weight, lora_a, lora_b, scaling, cache)
    scale = (magnitude.detach().to(norm.dtype) / norm).to(dtype)
    inv = (scale.to(norm.dtype) * norm).reciprocal().nan_to_num(posinf=0.0, neginf=0.0)  # 1/m, 0 where m is 0
    return scale, inv


def _dora_out(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
              lora_b: torch.Tensor, scale: torch.Tensor, scaling: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale * (x W^T + s x A^T B^T) + b, x A^T, diag(scale) W, s diag(scale) B): the per-row scale is folded
    into W and B, so no (N, out) pass is spent on it (``diag(scale) W`` is smaller than the activations
    whenever N > in)."""
    xa = torch.mm(x, lora_a.t())  # (N, r)
    b_scaled = lora_b * (scale * scaling).unsqueeze(1)  # (out, r)
    w_scaled = weight * scale.unsqueeze(1)  # (out, in)
    low = torch.mm(xa, b_scaled.t()) if bias is None else torch.addmm(bias, xa, b_scaled.t())  # (N, out)
    return _accumulate(low, x, w_scaled), xa, w_scaled, b_scaled


class _DoraLinear(torch.autograd.Function):
    """On flattened (N, in) inputs; the magnitude's gradient sum_n g (y - b) / (scale norm) reuses the output.

    Keeps W itself, not ``diag(scale) W`` (a weight-sized copy per layer alive from forward to backward: 425 MB
    over SmolLM2-135M's linears); backward scales whichever is smaller, the gradient (N, out) or W (out, in).
    ``recompute`` keeps nothing (N, out)-sized either and redoes the output in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, magnitude: torch.Tensor, scaling: float, recompute: bool,
                cache: dict | None) -> torch.Tensor:
        scale, inv = _dora_scales(weight, lora_a, lora_b, magnitude, scaling, x.dtype, cache)
        y, xa, _, b_scaled = _dora_out(x, weight, bias, lora_a, lora_b, scale, scaling)
        if recompute:
            ctx.save_for_backward(x, xa, weight, bias, lora_a, lora_b, scale, inv, None, None, None)
        else:
            ctx.save_for_backward(x, xa, weight, bias, lora_a, None, scale, inv, None, b_scaled, y)
        ctx.scaling, ctx.recompute = scaling, recompute
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        need_x, _, need_bias, need_a, need_b, need_m, _, _, _ = ctx.needs_input_grad
        x, xa, weight, bias, lora_a, lora_b, scale, inv, w_scaled, b_scaled, y = ctx.saved_tensors
        if ctx.recompute:
            y, _, w_scaled, b_scaled = _dora_out(x, weight, bias, lora_a, lora_b, scale, ctx.scaling)
        g = grad.contiguous()  # (N, out)
        grad_m = None
        if need_m:  # sum_n g (y - b) / (scale norm)
            out = y if bias is None else y - bias
            grad_m = (g * out).sum(0, dtype=inv.dtype).mul_(inv).to(y.dtype)
        u = torch.mm(g, b_scaled)  # (N, r) = s (g diag(scale)) B
        grad_a = torch.mm(u.t(), x) if need_a else None  # (r, in)
        grad_b = torch.mm(g.t(), xa).mul_((scale * ctx.scaling).unsqueeze(1)) if need_b else None  # (out, r)
        grad_x = None
        if need_x:
            low = torch.mm(u, lora_a)
            if w_scaled is not None:
                grad_x = low.addmm_(g, w_scaled)
            elif g.shape[0] < weight.shape[1]:  # (g diag(scale)) W: an (N, out) pass
                grad_x = low.addmm_(g * scale, weight)
            else:  # g (diag(scale) W): an (out, in) pass
                grad_x = low.addmm_(g, weight * scale.unsqueeze(1))
        grad_bias = g.sum(0) if need_bias else None
        return grad_x, None, grad_bias, grad_a, grad_b, grad_m, None, None, None


def dora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, magnitude: torch.Tensor, scaling: float, recompute: bool = False,
                cache: dict | None = None) -> torch.Tensor:
    """DoRA's output ``m / ||W + s B A||_row * (x W^T + s x A^T B^T) + b`` (no dropout on the adapter input).

    ``recompute=True`` keeps nothing of size (N, out) or (out, in) for backward and redoes the base matmul
    there instead; the default recovers the magnitude's gradient from the output. ``cache``, a dict the caller
    keeps per weight, holds W's row norms between calls (W is frozen).
    """
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x2.requires_grad or lora_a.requires_grad or lora_b.requires_grad
                                    or magnitude.requires_grad or (bias is not None and bias.requires_grad)):
        y = _DoraLinear.apply(x2, weight, bias, lora_a, lora_b, magnitude, scaling, recompute, cache)
    else:
        scale = _dora_scales(weight, lora_a, lora_b, magnitude, scaling, x.dtype, cache)[0]
        y = _dora_out(x2, weight, bias, lora_a, lora_b, scale, scaling)[0]
    return y.view(*x.shape[:-1], y.shape[-1])
