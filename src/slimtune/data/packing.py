"""Sequence packing: several tokenized examples per row of at most `max_length` tokens.

A packed example keeps each sequence's own positions (`position_ids` restart at 0) and its boundaries
(`seq_lens`); the first label of every sequence is -100, so the shifted loss never predicts one sequence's
first token from the end of the previous one. The attention isolation itself is the collator's job
(`slimtune.data.collate.PackedCollator`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from slimtune.errors import ConfigError, DataError

from .tokenize import IGNORE_INDEX, Example

PackStrategy = Literal["ffd", "sequential"]


def _bins_sequential(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    bins: list[list[int]] = []
    used = max_length + 1
    for i, n in enumerate(lengths):
        if used + n > max_length:
            bins.append([])
            used = 0
        bins[-1].append(i)
        used += n
    return bins


def _bins_ffd(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """First-fit decreasing: longest first into the first row with room; each row keeps input order."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        slot = next((b for b, r in enumerate(room) if r >= n), None)
        if slot is None:
            bins.append([])
            room.append(max_length)
            slot = len(bins) - 1
        bins[slot].append(i)
        room[slot] -= n
    return [sorted(b) for b in sorted(bins, key=min)]


def pack_examples(
    examples: Sequence[Example], max_length: int, strategy: PackStrategy = "ffd"
) -> list[Example]:
    """Pack causal-LM examples (input_ids, labels) into rows of at most `max_length` tokens.

    "ffd" (first-fit decreasing) fills rows best; "sequential" keeps the data order across rows.
    """
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2 for packing, got {max_length!r}")
    if strategy not in ("ffd", "sequential"):
        raise ConfigError(f"packing strategy must be 'ffd' or 'sequential', got {strategy!r}")
    lengths = [len(ex["input_ids"]) for ex in examples]
    for ex, n in zip(examples, lengths, strict=True):
        if "labels" not in ex or not isinstance(ex["labels"], list):
            raise ConfigError("packing needs causal-LM examples with token labels (not classification)")
        if n > max_length or n == 0:
            raise DataError(f"example {ex.get('source', '?')} has {n} tokens; packing needs 1..{max_length}")
    groups = (_bins_ffd if strategy == "ffd" else _bins_sequential)(lengths, max_length)
    return [_concat([examples[i] for i in group]) for group in groups]


def _concat(parts: Sequence[Example]) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for ex in parts:
        ids.extend(ex["input_ids"])
        labels.append(IGNORE_INDEX)  # never predicted across the boundary
        labels.extend(ex["labels"][1:])
        positions.extend(range(len(ex["input_ids"])))
    return {
        "input_ids": ids, "labels": labels, "position_ids": positions,
        "seq_lens": [len(ex["input_ids"]) for ex in parts],
        "source": [ex.get("source", "") for ex in parts],
    }


def packing_efficiency(packed: Sequence[Example], max_length: int) -> float:
    """Share of the packed rows' token slots that hold real tokens."""
    if not packed:
        return 0.0
    return sum(len(ex["input_ids"]) for ex in packed) / (len(packed) * max_length)


__all__ = ["PackStrategy", "pack_examples", "packing_efficiency"]
