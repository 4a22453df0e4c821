"""Trainable bias offsets kept beside a frozen base bias, so that an adapter's bias change can be disabled,
switched and merged like any other adapter state. Saved as PEFT does: the full trained bias under
``<module>.bias``."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.core.layer import AdapterLayer


def has_bias(module: nn.Module) -> bool:
    return isinstance(getattr(module, "bias", None), torch.Tensor)


class BiasOffsets(nn.Module):
    """Per-adapter trained biases beside a frozen copy of the original one (biases are small).

    Keeping the full trained values, not offsets, makes save/load exact: PEFT stores the full bias.
    """

    original: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.values = nn.ParameterDict()
        self.register_buffer("original", None, persistent=False)

    def add(self, name: str, like: torch.Tensor) -> None:
        if self.original is None:
            self.original = like.detach().clone()
        self.values[name] = nn.Parameter(self.original.clone())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.values

    def offset(self, name: str) -> torch.Tensor:
        if self.original is None:
            raise KeyError(name)
        return self.values[name] - self.original


def bias_export(offsets: BiasOffsets, name: str) -> torch.Tensor:
    """The trained bias as PEFT stores it: the full value, not the offset."""
    return offsets.values[name].detach()


def bias_import(offsets: BiasOffsets, name: str, value: torch.Tensor) -> None:
    with torch.no_grad():
        offsets.values[name].copy_(value.to(offsets.values[name].dtype))


class BiasLayer(AdapterLayer):
    """A module whose only adapter state is a bias offset (``bias="all"`` beside LoRA, and BitFit)."""

    own_children = frozenset({"bias_offsets"})

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.bias_offsets = BiasOffsets()

    def add(self, name: str) -> None:
        self.bias_offsets.add(name, self.base_tensors()["bias"])

    def adapter_names(self) -> list[str]:
        return list(self.bias_offsets.values.keys())

    def remove(self, name: str) -> None:
        del self.bias_offsets.values[name]

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        return {"bias": self.bias_offsets.values[name]}

    def delta(self, name: str, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return self.bias_offsets.offset(name)

    def _mixed_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = self.row_adapters or []
        for i, name in enumerate(rows):
            if name is not None and name in self.bias_offsets:
                y = y.index_add(0, torch.tensor([i], device=y.device),
                                self.bias_offsets.offset(name).to(y.dtype).expand_as(y[i : i + 1]))
        return y

    def delta_weight(self, name: str) -> dict[str, torch.Tensor]:
        return {"bias": self.bias_offsets.offset(name).detach()}

    def export_state(self, name: str) -> dict[str, torch.Tensor]:
        return {"bias": bias_export(self.bias_offsets, name)}

    def import_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        bias_import(self.bias_offsets, name, state["bias"])
