"""The order in which examples are seen: a seeded permutation per epoch, consumed one global batch per step.

The position (epoch, index into that epoch's permutation) is all a checkpoint needs to continue exactly, in
one process or many: a global batch is split into micro-batches per process deterministically, so that
batch_size * world_size * grad_accum examples make one step whatever the world size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimtune.errors import ConfigError


@dataclass
class DataPosition:
    """Where the stream stands: ``index`` examples of epoch ``epoch``'s permutation are consumed."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> DataPosition:
        return cls(int(data["epoch"]), int(data["index"]))


class BatchOrder:
    """Yields, step by step, this process's micro-batches of example indices."""

    def __init__(self, n_examples: int, global_batch: int, seed: int, position: DataPosition | None = None) -> None:
        if n_examples < global_batch:
            raise ConfigError(
                f"the training data has {n_examples} examples but one step needs {global_batch} "
                "(batch_size * world_size * grad_accum); lower batch_size or grad_accum, or add data"
            )
        self.n, self.global_batch, self.seed = n_examples, global_batch, seed
        self.position = position or DataPosition()
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def next_global(self) -> list[int]:
        """The example indices of the next step's global batch; advances the position."""
        if self.position.index + self.global_batch > self.n:  # drop the partial tail of an epoch
            self.position = DataPosition(self.position.epoch + 1, 0)
        start = self.position.index
        chosen = self.permutation(self.position.epoch)[start:start + self.global_batch].tolist()
        self.position = DataPosition(self.position.epoch, start + self.global_batch)
        return chosen


def micro_batches(global_indices: list[int], batch_size: int, grad_accum: int, rank: int,
                  world_size: int) -> list[list[int]]:
    """Rank ``rank``'s ``grad_accum`` micro-batches: micro-batch k of rank r is the global slice
    ``(k * world_size + r) * batch_size``, so the union over ranks of micro-batch k is the same examples
    a single process with batch_size * world_size would see."""
    out = []
    for k in range(grad_accum):
        start = (k * world_size + rank) * batch_size
        out.append(global_indices[start:start + batch_size])
    return out
