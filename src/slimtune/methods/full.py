"""Full training of chosen modules beside (or instead of) an adapter: PEFT's ``modules_to_save`` and
slimtune's selective fine-tuning (whole blocks or modules by pattern, first / last k blocks).

Each adapter gets its own trainable copy of the module; the original stays frozen, so disabling or switching
adapters gives the base back exactly. Saved as PEFT saves modules_to_save: ``<module path>.<param>``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from slimtune.core import targets as tg
from slimtune.core.layer import AdapterLayer
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.errors import AdapterStateError, ConfigError, MergeError, TargetError

_BLOCK = re.compile(r"(?:^|.*\.)(?:layers|layer|h|blocks|block)\.(\d+)$")


class FullCopyLayer(AdapterLayer):
    """A frozen module and, per adapter, a trainable copy that replaces it while that adapter is active."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.copies = nn.ModuleDict()
        self._original: nn.Module | None = None  # the frozen module while a copy is merged in

    def add(self, name: str) -> None:
        clone = copy.deepcopy(tg.innermost(self.base_layer))
        self.copies[name] = clone

    def adapter_names(self) -> list[str]:
        return list(self.copies.keys())

    def remove(self, name: str) -> None:
        del self.copies[name]

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        return dict(self.copies[name].named_parameters())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.disabled or self.merged:
            return self.base_layer(*args, **kwargs)
        if self.row_adapters is not None:
            return self._mixed(*args, **kwargs)
        live = [n for n in self.active if n in self.copies]
        if len(live) > 1:
            raise AdapterStateError(f"adapters {live} each train their own copy of the same module; activate one")
        return (self.copies[live[0]] if live else self.base_layer)(*args, **kwargs)

    def _mixed(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if not isinstance(y, torch.Tensor):
            raise AdapterStateError("mixed-adapter batches through fully trained blocks are not supported")
        rows = self.row_adapters or []
        for name in dict.fromkeys(r for r in rows if r is not None and r in self.copies):
            idx = torch.tensor([i for i, r in enumerate(rows) if r == name], device=x.device)
            y = y.index_copy(0, idx, self.copies[name](x.index_select(0, idx), *args, **kwargs).to(y.dtype))
        return y

    def check_merge(self, name: str) -> None:
        if len(self.merged) or any(not torch.isfinite(p).all() for p in self.copies[name].parameters()):
            raise MergeError(f"cannot merge {name!r}: another copy is merged here, or its weights are not finite")

    def merge(self, name: str) -> None:
        if name in self.merged:
            return
        self._original = self.base_layer
        self.base_layer = self.copies[name]
        self.merged.append(name)

    def unmerge(self) -> None:
        if self._original is not None:
            self.base_layer = self._original
            self._original = None
        self.merged.clear()

    def base_tensors(self) -> dict[str, torch.Tensor]:
        return {}


def place_copies(model: nn.Module, patterns: Sequence[str], name: str, field: str) -> list[AdapterLayer]:
    """Give adapter ``name`` a trainable copy of every module the patterns name (suffix match, as PEFT)."""
    paths = plan_copies(model, patterns, field)
    layers: list[AdapterLayer] = []
    for path in paths:
        layer = tg.wrapped(model, path, FullCopyLayer, FullCopyLayer)
        layer.add(name)
        layers.append(layer)
    return layers


def plan_copies(model: nn.Module, patterns: Sequence[str], field: str) -> list[str]:
    paths = [p for p, m in model.named_modules()
             if p and tg.matches(tuple(patterns), p) and not _inside_adapter(model, p)
             and (not isinstance(m, AdapterLayer) or isinstance(m, FullCopyLayer))]
    if not paths:
        children = sorted({p.split(".")[-1] for p, _ in model.named_children()})
        raise TargetError(f"{field} {list(patterns)!r} matched no module; top-level modules here: {children}")
    return paths


def _inside_adapter(model: nn.Module, path: str) -> bool:
    return any(path.startswith(p + ".") for p, m in model.named_modules() if p and isinstance(m, AdapterLayer))


def block_paths(model: nn.Module) -> list[str]:
    """Paths of the numbered transformer blocks (model.layers.0, transformer.h.0, encoder.layer.0, ...)."""
    return [p for p, _ in model.named_modules() if _BLOCK.match(p)]


@dataclass(frozen=True)
class SelectiveConfig(AdapterConfig):
    """Selective fine-tuning: chosen modules or blocks train fully, everything else stays frozen."""

    peft_type: ClassVar[str] = "SELECTIVE"

    targets: tuple[str, ...] = ()
    """Modules to train fully, by path suffix (e.g. "lm_head", "layers.11.mlp")."""
    first_k: int = 0
    """Also train the first k transformer blocks."""
    last_k: int = 0
    """Also train the last k transformer blocks."""

    def __post_init__(self) -> None:
        if isinstance(self.targets, str | list):
            value = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
            object.__setattr__(self, "targets", value)
        for field_name in ("first_k", "last_k"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"SelectiveConfig.{field_name} must be a non-negative integer, got {value!r}")
        if not self.targets and not self.first_k and not self.last_k:
            raise ConfigError("SelectiveConfig needs targets, first_k or last_k; it would train nothing")

    def resolve(self, model: nn.Module) -> list[str]:
        blocks = block_paths(model)
        if (self.first_k or self.last_k) and not blocks:
            raise TargetError("first_k/last_k need numbered blocks (model.layers.N, h.N, layer.N); none found")
        if self.first_k + self.last_k > len(blocks):
            raise ConfigError(f"first_k + last_k = {self.first_k + self.last_k} exceeds the {len(blocks)} blocks")
        chosen = blocks[: self.first_k] + (blocks[-self.last_k:] if self.last_k else [])
        return list(dict.fromkeys([*self.targets, *chosen]))

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        return {"peft_type": self.peft_type, "target_modules": sorted(paths), "first_k": self.first_k,
                "last_k": self.last_k}

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> SelectiveConfig:
        return cls(targets=tuple(data.get("target_modules") or ()))


def _plan(model: nn.Module, cfg: SelectiveConfig) -> list[str]:
    return plan_copies(model, cfg.resolve(model), "SelectiveConfig.targets")


def _inject(model: nn.Module, cfg: SelectiveConfig, name: str, paths: list[str]) -> list[AdapterLayer]:
    return place_copies(model, paths, name, "SelectiveConfig.targets")


register_method(MethodSpec(peft_type="SELECTIVE", config_cls=SelectiveConfig, plan=_plan, inject=_inject))
