"""Batch collators: dynamic padding, and packed rows with block-diagonal causal attention.

transformers 5.x returns a 4-D attention mask (B, 1, T, T) unchanged to the attention layers
(`masking_utils._preprocess_mask_arguments`), so the packed collator builds it in full: eager attention
adds it to the scores (it must be additive float), SDPA takes additive or boolean. The alternative,
`mask="position_ids"`, sends no mask and lets transformers detect packed sequences from position_ids
restarting at 0 (`find_packed_sequence_indices`, what flash-attention varlen uses), but transformers does
that only when no KV cache is built: call the model with use_cache=False, or sequences silently attend
to each other. The 4-D mask has no such condition, hence the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from slimtune.errors import ConfigError

from .tokenize import IGNORE_INDEX, Example

PaddingSide = Literal["right", "left"]
MaskMode = Literal["4d", "position_ids"]


def _padded_length(lengths: Sequence[int], multiple: int | None) -> int:
    longest = max(lengths)
    if multiple:
        longest = -(-longest // multiple) * multiple
    return longest


def _pad(rows: Sequence[Sequence[int]], length: int, value: int, side: PaddingSide) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        if side == "right":
            out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        else:
            out[i, length - len(row):] = torch.as_tensor(row, dtype=torch.long)
    return out


def _check_pad(pad_token_id: Any, multiple: int | None) -> None:
    if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
        raise ConfigError(f"pad_token_id must be an int (the tokenizer's pad or eos id), "
                          f"got {pad_token_id!r}")
    if multiple is not None and (not isinstance(multiple, int) or multiple < 1):
        raise ConfigError(f"pad_to_multiple_of must be a positive int or None, got {multiple!r}")


class PaddingCollator:
    """Pad a batch to its longest example (optionally up to a multiple, e.g. 8 for tensor cores).

    Gives input_ids and attention_mask (B, T); labels (B, T) padded with -100 for causal examples, or
    labels (B,) from the int `label` of classification examples. Other keys (e.g. `source`) are dropped.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None,
                 padding_side: PaddingSide = "right") -> None:
        _check_pad(pad_token_id, pad_to_multiple_of)
        if padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side: PaddingSide = padding_side

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ConfigError("cannot collate an empty batch")
        ids = [ex["input_ids"] for ex in examples]
        length = _padded_length([len(r) for r in ids], self.pad_to_multiple_of)
        batch = {
            "input_ids": _pad(ids, length, self.pad_token_id, self.padding_side),
            "attention_mask": _pad([[1] * len(r) for r in ids], length, 0, self.padding_side),
        }
        if "labels" in examples[0]:
            batch["labels"] = _pad([ex["labels"] for ex in examples], length, IGNORE_INDEX, self.padding_side)
        elif "label" in examples[0]:
            batch["labels"] = torch.tensor([int(ex["label"]) for ex in examples], dtype=torch.long)
        return batch


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) positions restarting at 0 per sequence -> (B, T) sequence index within each row."""
    return (position_ids == 0).long().cumsum(-1)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True where query t may attend key s: same sequence and s <= t."""
    seg = segment_ids(position_ids)  # (B, T)
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    t = position_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal)[:, None, :, :]  # (B, 1, T, T)


def to_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask to the additive form eager attention expects: 0 where allowed, dtype's min elsewhere."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask, torch.finfo(dtype).min)


class PackedCollator:
    """Collate packed rows so that no token attends to, or is predicted from, another sequence.

    Padding gets its own positions (0, 1, ...) and so its own block; its labels are -100. With
    mask="4d" the batch holds attention_mask (B, 1, T, T): additive in `mask_dtype` (float32 by default;
    use the model's compute dtype under bf16), or boolean when mask_dtype is torch.bool (SDPA only: eager
    attention would add the booleans instead of masking). With mask="position_ids" it holds none.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, mask: MaskMode = "4d",
                 mask_dtype: torch.dtype = torch.float32) -> None:
        _check_pad(pad_token_id, pad_to_multiple_of)
        if mask not in ("4d", "position_ids"):
            raise ConfigError(f"mask must be '4d' or 'position_ids', got {mask!r}")
        if mask_dtype != torch.bool and not mask_dtype.is_floating_point:
            raise ConfigError(f"mask_dtype must be torch.bool or a float dtype, got {mask_dtype!r}")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.mask: MaskMode = mask
        self.mask_dtype = mask_dtype

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ConfigError("cannot collate an empty batch")
        if any("position_ids" not in ex for ex in examples):
            raise ConfigError("PackedCollator needs packed examples (with position_ids); use pack_examples")
        length = _padded_length([len(ex["input_ids"]) for ex in examples], self.pad_to_multiple_of)
        positions = [list(ex["position_ids"]) + list(range(length - len(ex["input_ids"]))) for ex in examples]
        batch = {
            "input_ids": _pad([ex["input_ids"] for ex in examples], length, self.pad_token_id, "right"),
            "labels": _pad([ex["labels"] for ex in examples], length, IGNORE_INDEX, "right"),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }
        if self.mask == "4d":
            mask = block_causal_mask(batch["position_ids"])
            additive = self.mask_dtype != torch.bool
            batch["attention_mask"] = to_additive(mask, self.mask_dtype) if additive else mask
        return batch


__all__ = [
    "MaskMode", "PackedCollator", "PaddingCollator", "PaddingSide", "block_causal_mask", "segment_ids",
    "to_additive",
]
