"""Shared pieces of the training tests: a tiny random Llama with LoRA, random token data, a padding collator."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import slimtune as st

VOCAB = 256


def tiny_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)
    return LlamaForCausalLM(cfg)


def tiny_lora_llama(seed: int = 0, r: int = 4, dropout: float = 0.0) -> st.AdaptedModel:
    config = st.LoraConfig(r=r, alpha=2 * r, dropout=dropout, targets="all-linear", init="gaussian")
    model = st.adapt(tiny_llama(seed), config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero B too, so that every adapter tensor gets a gradient from step one
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def token_data(n: int, seed: int = 0, min_len: int = 6, max_len: int = 16) -> list[dict[str, Tensor]]:
    """Random token sequences of random lengths (labels = input_ids)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (length,), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)})
    return out


def pad_collate(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Right padding: pad id 0, label -100, mask 0."""
    length = max(int(r["input_ids"].shape[0]) for r in rows)
    fill = {"input_ids": 0, "labels": -100, "attention_mask": 0}
    batch = {}
    for key, value in fill.items():
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : r[key].shape[0]] = r[key]
        batch[key] = out
    return batch


def trainable_snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
