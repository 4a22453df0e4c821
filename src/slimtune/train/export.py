"""The run's final adapter: RUN/adapter/ in the PEFT layout with lineage, written by rank 0 only (under FSDP2
the sharded parameters are gathered first, on every rank)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from slimtune.train.distributed import DistEnv, barrier
from slimtune.train.optim import named_trainable
from slimtune.train.resume import check_finite, gather_trainable

log = logging.getLogger(__name__)


def save_final_adapter(model: nn.Module, directory: Path, lineage: dict[str, Any], env: DistEnv) -> Path | None:
    """Write the adapter (AdaptedModel) or the trainable tensors (any other module); None on ranks > 0."""
    from slimtune.core.model import AdaptedModel
    from slimtune.formats.peft import save_adapter
    from slimtune.formats.safe import write_json, write_tensors

    full = gather_trainable(model)  # every rank: a collective under FSDP2
    check_finite(full, "the adapter")
    path: Path | None = None
    if env.is_main:
        if isinstance(model, AdaptedModel):
            with _FullParameters(model, full):
                path = save_adapter(model, directory, lineage=lineage)
        else:
            write_tensors(directory / "trainable.safetensors", full)
            write_json(directory / "slimtune.json", lineage)
            path = directory
        log.info("saved the final adapter to %s", directory)
    barrier(env)
    return path


class _FullParameters:
    """Swap sharded (DTensor) trainable parameters for their gathered full values while saving."""

    def __init__(self, model: nn.Module, full: dict[str, Any]) -> None:
        self.model, self.full = model, full
        self.saved: list[tuple[nn.Module, str, Any]] = []

    def __enter__(self) -> None:
        for name, p in named_trainable(self.model):
            if not hasattr(p, "device_mesh"):
                continue
            owner_path, _, leaf = name.rpartition(".")
            owner = self.model.get_submodule(owner_path) if owner_path else self.model
            self.saved.append((owner, leaf, p))
            owner._parameters[leaf] = nn.Parameter(self.full[name], requires_grad=False)

    def __exit__(self, *exc: object) -> None:
        for owner, leaf, p in self.saved:
            owner._parameters[leaf] = p
