"""The adapter-layer protocol: a module that wraps one base module and holds named adapters of one method.

The core only talks to layers through this interface, so it never needs to know which method a layer is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimtune.errors import AdapterStateError, MergeError


class AdapterLayer(nn.Module):
    """Base of every slimtune layer: ``y = base(x) + sum(delta_a(x) for active adapters a)``.

    Subclasses store per-adapter state in ``nn.ModuleDict`` / ``nn.ParameterDict`` keyed by adapter name
    (what makes several adapters, switching and mixed batches possible) and implement ``delta``,
    ``delta_weight`` and the ``*_state`` hooks. Multiplicative methods override ``forward``.
    """

    #: whether the adapter can be folded into the base weights
    mergeable: bool = True
    #: names of child modules that hold only this layer's own adapter tensors, never a base module (so a walk
    #: looking for adapter layers need not enter them)
    own_children: frozenset[str] = frozenset()

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active: tuple[str, ...] = ()
        self.merged: list[str] = []
        self.disabled = False
        # one adapter name (or None for the base) per batch row, set by AdaptedModel for mixed batches
        self.row_adapters: list[str | None] | None = None

    # ----- what a method implements -------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        """The trainable tensors of one adapter, keyed as PEFT writes them relative to this module."""
        raise NotImplementedError

    def delta(self, name: str, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """The additive contribution of adapter ``name`` for input ``x``; ``base`` is the base layer's output."""
        raise NotImplementedError

    def delta_weight(self, name: str) -> dict[str, torch.Tensor]:
        """What merging adds to the base module's tensors, keyed by base tensor name ("weight", "bias")."""
        raise NotImplementedError

    def unmerge_delta(self, name: str) -> dict[str, torch.Tensor]:
        """What unmerging subtracts, computed from the merged weights; the same as ``delta_weight`` for
        methods whose update does not depend on the base weight (LoRA), overridden by those that do."""
        return self.delta_weight(name)

    def export_state(self, name: str) -> dict[str, torch.Tensor]:
        """Tensors to save for one adapter (PEFT-relative keys); defaults to the parameters as they are."""
        return {k: p.detach() for k, p in self.adapter_parameters(name).items()}

    def import_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``export_state``; shapes were checked by the caller."""
        params = self.adapter_parameters(name)
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value.to(dtype=params[key].dtype, device=params[key].device))

    def expected_shapes(self, name: str) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.export_state(name).items()}

    # ----- shared behaviour -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return y
        if self.row_adapters is not None:
            return self._mixed_forward(x, y)
        base = y
        for name in self.active:
            if name not in self.merged:
                y = y + self.delta(name, x, base).to(y.dtype)
        return y

    def _mixed_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = self.row_adapters or []
        if x.shape[0] != len(rows):
            raise AdapterStateError(
                f"adapter_names has {len(rows)} entries but the batch has {x.shape[0]} rows; "
                "give exactly one adapter name (or None) per row"
            )
        own = set(self.adapter_names())
        for name in dict.fromkeys(r for r in rows if r is not None and r in own):
            idx = torch.tensor([i for i, r in enumerate(rows) if r == name], device=x.device)
            rows_x, rows_y = x.index_select(0, idx), y.index_select(0, idx)
            y = y.index_add(0, idx, self.delta(name, rows_x, rows_y).to(y.dtype))
        return y

    def base_tensors(self) -> dict[str, torch.Tensor]:
        base = self.base_layer
        if isinstance(base, AdapterLayer):
            return base.base_tensors()
        return {k: v for k, v in (("weight", getattr(base, "weight", None)), ("bias", getattr(base, "bias", None)))
                if isinstance(v, torch.Tensor)}

    def check_merge(self, name: str) -> None:
        """Raise MergeError if merging ``name`` would write a non-finite value; changes nothing."""
        tensors = self.base_tensors()
        for key, delta in self.delta_weight(name).items():
            merged = tensors[key].detach().float() + delta.float()
            if not torch.isfinite(merged).all():
                raise MergeError(
                    f"merging adapter {name!r} would put NaN/Inf into {type(self.base_layer).__name__}.{key}; "
                    "the adapter weights are not finite (check them with slimtune's adapter scan)"
                )

    def merge(self, name: str) -> None:
        if name in self.merged or name not in self.adapter_names():
            return
        tensors = self.base_tensors()
        with torch.no_grad():
            for key, delta in self.delta_weight(name).items():
                tensors[key].add_(delta.to(tensors[key].dtype))
        self.merged.append(name)

    def unmerge(self) -> None:
        tensors = self.base_tensors()
        with torch.no_grad():
            while self.merged:
                name = self.merged.pop()
                for key, delta in self.unmerge_delta(name).items():
                    tensors[key].sub_(delta.to(tensors[key].dtype))

    def all_parameters(self, names: Iterable[str]) -> list[torch.Tensor]:
        return [p for n in names if n in self.adapter_names() for p in self.adapter_parameters(n).values()]


class InputAdapter(nn.Module):
    """An adapter that acts on the model's inputs as a whole (virtual tokens, per-layer key/value prefixes)
    rather than inside one layer. Its tensors are saved without the ``base_model.model.`` prefix, as PEFT
    saves prompt-learning methods (``prompt_embeddings``)."""

    mergeable: bool = False

    def adapter_parameters(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def export_state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.adapter_parameters().items()}

    def import_state(self, state: dict[str, torch.Tensor]) -> None:
        params = self.adapter_parameters()
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value.to(dtype=params[key].dtype, device=params[key].device))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.export_state().items()}

    def prepare(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Rewrite the forward call's arguments (e.g. prepend virtual token embeddings)."""
        raise NotImplementedError

    def prepare_generation(self, model: nn.Module, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Rewrite ``generate``'s arguments; defaults to ``prepare``."""
        return self.prepare(model, args, kwargs)
