"""Fused, chunked linear + cross-entropy for the LM head: the (N, vocab) logits never exist whole.

Tokens go through in chunks; per chunk the logits are formed in float32, their logsumexp and target logit give
the loss, and, because the loss is the last op, the gradient with respect to the hidden states (and the head's
weight, if it trains) is formed right there (softmax minus one-hot). Backward only scales what forward kept:
(N, hidden) for the input, nothing of size vocab. Two head-sized products per chunk, as unfused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.errors import AdapterStateError
from slimtune.kernels.config import autocast_dtype, enabled

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 26  # float32 logits per chunk on a GPU: 256 MiB
_CPU_CHUNK_ELEMENTS, _CPU_CHUNK_ROWS = 1 << 25, 384  # on the CPU at most 128 MiB and 384 rows: of 170 to 1016
# rows of SmolLM2's 49k vocabulary, 384 formed the (V, c) logits fastest (531 ms per 1016 rows, 256 rows 687)


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
        vocab_first, need = _vocab_first(hidden), grad_h is not None or grad_w is not None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]  # (c, H)
            ok = valid[start:start + chunk]
            target = torch.where(ok, labels[start:start + chunk], 0)
            loss_sum, dlogits = _chunk(h, weight, target, ok, inv, vocab_first, need)
            total += loss_sum
            if dlogits is None:
                continue
            dlogits = dlogits.to(hidden.dtype)  # d(mean loss)/d logits, (c, V) or (V, c)
            if grad_h is not None:
                torch.mm(dlogits.t() if vocab_first else dlogits, weight, out=grad_h[start:start + chunk])
            if grad_w is not None:
                grad_w += (torch.mm(dlogits, h) if vocab_first else torch.mm(dlogits.t(), h)).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return torch.where(count > 0, total * inv, torch.nan)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def _vocab_first(hidden: torch.Tensor) -> bool:
    """Whether the chunks' logits are laid out (V, c): on the CPU, whose GEMM forms them fastest so (_chunk)."""
    return not hidden.is_cuda


def _chunk(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ok: torch.Tensor, inv: torch.Tensor,
           vocab_first: bool, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk's summed loss and, with ``need_grad``, its d(mean loss)/d logits (softmax minus one-hot, times
    ``ok / count``), in float32, laid out (c, V), or (V, c) with ``vocab_first``.

    One exp per logit: ``p = exp(l - max)`` in place, ``lse = max + log(sum p)``, then ``p / sum p`` is the
    softmax (``logsumexp`` followed by ``exp(l - lse)`` takes two). On the CPU the (V, H) x (H, c) product
    forms the logits in 0.7x the time of (c, H) x (H, V) (SmolLM2's 49k vocabulary, 384-row chunks)."""
    dim = 0 if vocab_first else 1
    logits = (torch.mm(weight, h.t()) if vocab_first else torch.mm(h, weight.t())).float()
    picked = logits.gather(dim, target.unsqueeze(dim)).squeeze(dim)
    top = logits.amax(dim)
    probs = logits.sub_(top.unsqueeze(dim)).exp_()  # in place: the logits are not needed again
    norm = probs.sum(dim)
    loss_sum = ((top + norm.log() - picked) * ok).sum()
    if not need_grad:
        return loss_sum, None
    share = ok.float() * inv  # each target row's weight in the mean
    probs.mul_((share / norm).unsqueeze(dim))
    probs.scatter_add_(dim, target.unsqueeze(dim), -share.unsqueeze(dim))
    return loss_sum, probs


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, chunk: int | None = None) -> torch.Tensor:
    """Mean over non-ignored tokens of ``cross_entropy(hidden @ weight.T, labels)``, chunked over tokens.

    ``hidden`` (N, H), ``weight`` (V, H), ``labels`` (N,) int. NaN when every label is ignored (as torch).
    Under autocast the products run in its dtype, as the unfused head's would.
    """
    if chunk:
        rows = chunk
    elif hidden.is_cuda:
        rows = max(128, _CHUNK_ELEMENTS // weight.shape[0])
    else:
        rows = max(128, min(_CPU_CHUNK_ROWS, _CPU_CHUNK_ELEMENTS // weight.shape[0]))
    cast = autocast_dtype(hidden)
    if cast is None:
        return _LinearCrossEntropy.apply(hidden, weight, labels, ignore_index, rows)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden.to(cast), weight.to(cast), labels, ignore_index, rows)


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The unfused computation: full logits in float32, then torch's cross-entropy."""
    return F.cross_entropy(torch.mm(hidden, weight.t()).float(), labels, ignore_index=ignore_index)


_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_router_logits")
"""Config fields under which a model's forward does more to the head's logits (or the loss) than the head."""


def _head_and_decoder(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder (hidden states out) and a plain, bias-free Linear head, or None if the model has others."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None)
    if any(getattr(c, k, None) for c in (config, text_config) for k in _LOGIT_TRANSFORMS):
        return None
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    head, decoder = get_head(), get_decoder()
    if type(head) is not nn.Linear or head.bias is not None:  # an adapted head takes the reference path
        return None
    if decoder is None or decoder is model:
        return None
    return decoder, head


def lm_loss(model: nn.Module, batch: Mapping[str, Any], fast: bool | None = None) -> torch.Tensor | None:
    """The causal-LM loss of ``batch`` with the head applied to the target positions only; None where it
    does not apply (then the model's own loss is the one to use).

    Same value as ``model(**batch).loss`` (labels shifted by one, -100 ignored, mean over targets, NaN when
    there are none), for a Hugging Face ``*ForCausalLM`` or a slimtune AdaptedModel wrapping one whose head
    is a plain Linear and whose forward does nothing more to the logits. The decoder gives the hidden states;
    only rows that have a target go through the head, so prompt, padding and the last position cost no
    (rows, vocab) product, forward or backward, and no logits for them are ever stored: chat data, trained
    on the assistant's tokens only, spends most of its positions there. With ``fast`` (default: the
    kernels' mode, see ``config.enabled``) the head's loss is ``linear_cross_entropy``, chunked, else
    float32 logits and torch's cross-entropy (the model's own arithmetic). An active prompt / prefix adapter
    puts its inputs in as the model's forward would (``AdaptedModel.model_inputs``): the virtual tokens' -100
    labels keep them out of the head. None for a batch without token labels (classification) or with per-row
    adapters.
    """
    input_ids, labels = batch.get("input_ids"), batch.get("labels")
    if not isinstance(input_ids, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return None
    if labels.shape != input_ids.shape or "adapter_names" in batch or "inputs_embeds" in batch:
        return None
    prepare = getattr(model, "model_inputs", None)  # a slimtune AdaptedModel: its prompt / prefix adapter
    parts = _head_and_decoder(getattr(model, "model", model) if prepare is not None else model)
    if parts is None:
        return None
    decoder, head = parts
    kwargs = prepare(**batch, use_cache=False) if prepare is not None else {**batch, "use_cache": False}
    labels = kwargs.pop("labels")
    hidden = decoder(**kwargs).last_hidden_state
    if hidden.shape[:2] != labels.shape:
        raise AdapterStateError(f"lm_loss: the decoder gave hidden states {tuple(hidden.shape)} for labels "
                                f"{tuple(labels.shape)}; call the model for its loss instead")
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)  # position t predicts token t + 1
    keep = (shifted != IGNORE_INDEX).nonzero().squeeze(1)
    rows, targets = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep), shifted.index_select(0, keep)
    if enabled(rows, "loss") if fast is None else fast:
        return linear_cross_entropy(rows, head.weight, targets)
    return F.cross_entropy(head(rows).float(), targets)


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, fast: bool | None = None) -> torch.Tensor:
    """The causal-LM loss of a Hugging Face ``*ForCausalLM`` (or a slimtune AdaptedModel wrapping one).

    Same value as ``model(input_ids, labels=labels).loss``, through ``lm_loss`` where the model allows it
    (the head on target positions only; chunked with ``fast``), else by calling the model.
    """
    batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
    if attention_mask is not None:
        batch["attention_mask"] = attention_mask
    loss = lm_loss(model, batch, fast)
    if loss is None:
        return model(**batch, use_cache=False).loss
    return loss
