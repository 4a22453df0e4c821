"""Fused, chunked linear + cross-entropy for the LM head: the (N, vocab) logits never exist whole.

Tokens go through in chunks; per chunk the logits are formed in float32, their logsumexp and target logit give
the loss, and, because the loss is the last op, the gradient with respect to the hidden states (and the head's
weight, if it trains) is formed right there (softmax minus one-hot). Backward only scales what forward kept:
(N, hidden) for the input, nothing of size vocab. Two head-sized products per chunk, as unfused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.kernels.config import enabled

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 26  # float32 logits per chunk: 256 MiB


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                ignore_index: int, chunk: int) -> torch.Tensor:
        valid = labels != ignore_index  # (N,)
        count = valid.sum()
        inv = 1.0 / count.clamp_min(1).float()
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]  # (c, H)
            ok = valid[start:start + chunk]
            target = torch.where(ok, labels[start:start + chunk], 0)
            logits = torch.mm(h, weight.t()).float()  # (c, V)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, target[:, None]).squeeze(1)
            total += ((lse - picked) * ok).sum()
            if grad_h is None and grad_w is None:
                continue
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs.scatter_add_(1, target[:, None], -torch.ones_like(picked[:, None]))
            dlogits = probs.mul_((ok.float() * inv)[:, None]).to(hidden.dtype)  # d(mean loss)/d logits
            if grad_h is not None:
                torch.mm(dlogits, weight, out=grad_h[start:start + chunk])
            if grad_w is not None:
                grad_w += torch.mm(dlogits.t(), h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return torch.where(count > 0, total * inv, torch.nan)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, chunk: int | None = None) -> torch.Tensor:
    """Mean over non-ignored tokens of ``cross_entropy(hidden @ weight.T, labels)``, chunked over tokens.

    ``hidden`` (N, H), ``weight`` (V, H), ``labels`` (N,) int. NaN when every label is ignored (as torch).
    """
    rows = chunk or max(128, _CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, labels, ignore_index, rows)


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The unfused computation: full logits in float32, then torch's cross-entropy."""
    return F.cross_entropy(torch.mm(hidden, weight.t()).float(), labels, ignore_index=ignore_index)


def _head_and_decoder(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder (hidden states out) and a plain, bias-free Linear head, or None if the model has others."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    head = get_head()
    if type(head) is not nn.Linear or head.bias is not None:  # an adapted head takes the reference path
        return None
    return get_decoder(), head


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, fast: bool | None = None) -> torch.Tensor:
    """The causal-LM loss of a Hugging Face ``*ForCausalLM`` (or a slimtune AdaptedModel wrapping one).

    Same value as ``model(input_ids, labels=labels).loss`` (labels shifted by one, -100 ignored, mean), but
    through ``linear_cross_entropy`` when ``fast`` (default: the kernels' mode, see ``config.enabled``) and the
    model allows it: its decoder gives the hidden states and the head's logits are never materialised.
    Otherwise it calls the model.
    """
    fast = enabled(input_ids) if fast is None else fast
    inputs: Any = getattr(model, "input_adapters", None)  # a slimtune AdaptedModel's prompt / prefix adapters
    inner = getattr(model, "model", model) if inputs is not None else model
    parts = _head_and_decoder(inner) if fast else None
    uses_inputs = inputs is not None and any(n in inputs for n in getattr(model, "active_adapters", ()))
    if parts is None or uses_inputs:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]  # (B, T): position t predicts token t + 1
    return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, shifted.reshape(-1))
