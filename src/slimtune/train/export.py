"""What a run leaves behind: RUN/adapter/ in the PEFT layout with lineage (an AdaptedModel), RUN/model/ in the
transformers layout (a transformers model trained without an adapter: full fine-tuning), or RUN/adapter/
trainable.safetensors (any other module). Written by rank 0 only; under FSDP2 the sharded tensors are gathered
first, on every rank."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from slimtune.train.distributed import DistEnv, barrier
from slimtune.train.optim import named_trainable, to_full
from slimtune.train.resume import check_finite, gather_trainable

log = logging.getLogger(__name__)

ADAPTER_DIR, MODEL_DIR = "adapter", "model"
LINEAGE_NAME = "slimtune.json"


@dataclass(frozen=True)
class Saved:
    """Where the run's result went: ``kind`` "adapter" (RUN/adapter) or "model" (RUN/model, a whole model)."""

    kind: Literal["adapter", "model"]
    path: Path


def is_full_model(model: nn.Module) -> bool:
    """A transformers model trained as it is, without an adapter: saved whole, loadable by from_pretrained."""
    from slimtune.core.model import AdaptedModel

    return not isinstance(model, AdaptedModel) and callable(getattr(model, "save_pretrained", None))


def save_final(model: nn.Module, run_dir: Path, lineage: dict[str, Any], env: DistEnv) -> Saved:
    """Save the run's result into ``run_dir`` (call on every rank); the returned place is the same on all."""
    if is_full_model(model):
        directory = Path(run_dir) / MODEL_DIR
        save_full_model(model, directory, lineage, env)
        return Saved("model", directory)
    directory = Path(run_dir) / ADAPTER_DIR
    save_final_adapter(model, directory, lineage, env)
    return Saved("adapter", directory)


def save_full_model(model: nn.Module, directory: Path, lineage: dict[str, Any], env: DistEnv) -> Path | None:
    """The whole model in the transformers layout (config.json, model.safetensors) plus slimtune.json."""
    from slimtune.formats.safe import write_json

    sharded = any(hasattr(t, "device_mesh") for t in model.state_dict().values())
    # under FSDP2 every rank joins the gathers; otherwise transformers saves the live tensors (ties kept)
    state = {k: to_full(v) for k, v in model.state_dict().items()} if sharded else None
    check_finite(state if state is not None else dict(model.state_dict()), "the model")
    path: Path | None = None
    if env.is_main:
        model.save_pretrained(directory, state_dict=state)  # type: ignore[operator]
        write_json(directory / LINEAGE_NAME, {**lineage, "saved": "full_model"})
        path = directory
        log.info("saved the fine-tuned model to %s", directory)
    barrier(env)
    return path


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
