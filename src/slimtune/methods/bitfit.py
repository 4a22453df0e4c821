"""BitFit (Ben Zaken et al. 2021): only the bias terms train. Saved in the PEFT layout with slimtune's own
``peft_type`` "BITFIT": ``adapter_model.safetensors`` holds ``base_model.model.<module>.bias`` (the trained
values), ``adapter_config.json`` the patterns. PEFT itself has no BitFit type and will not load it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from slimtune.core import targets as tg
from slimtune.core.layer import AdapterLayer
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.errors import ConfigError, TargetError
from slimtune.methods._checks import check_targets
from slimtune.methods.bias import BiasLayer, has_bias
from slimtune.methods.full import FullCopyLayer


@dataclass(frozen=True)
class BitFitConfig(AdapterConfig):
    """Train the biases of every module that has one (or of those the patterns pick)."""

    peft_type: ClassVar[str] = "BITFIT"

    targets: str | tuple[str, ...] | None = None
    """Modules whose bias trains (suffix names or a full-path regex); None: every module with a bias."""
    exclude: str | tuple[str, ...] | None = None
    """Modules to leave out."""

    def __post_init__(self) -> None:
        for name in ("targets", "exclude"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            if getattr(self, name) is not None:
                check_targets("BitFitConfig", name, getattr(self, name))

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        return {"peft_type": self.peft_type, "target_modules": sorted(paths), "exclude_modules": None}

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> BitFitConfig:
        targets = data.get("target_modules")
        return cls(targets=tuple(targets) if isinstance(targets, list) else targets,
                   exclude=data.get("exclude_modules"))


def plan(model: nn.Module, cfg: BitFitConfig) -> list[str]:
    wrappers = [p + "." for p, m in model.named_modules() if p and isinstance(m, AdapterLayer)]
    paths = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(w) for w in wrappers) or isinstance(module, FullCopyLayer):
            continue
        if not has_bias(tg.innermost(module)):
            continue
        if cfg.targets is not None and not tg.matches(cfg.targets, path):
            continue
        if cfg.exclude is not None and tg.matches(cfg.exclude, path):
            continue
        paths.append(path)
    if not paths and cfg.targets is None:
        raise ConfigError(f"{type(model).__name__} has no bias terms (Llama-style models have none), so BitFit "
                          "would train nothing; use LoRA or IA3 instead")
    if not paths:
        raise TargetError(f"BitFitConfig.targets {cfg.targets!r} matched no module with a bias")
    return paths


def inject(model: nn.Module, cfg: BitFitConfig, name: str, paths: list[str]) -> list[AdapterLayer]:
    layers: list[AdapterLayer] = []
    for path in paths:
        layer = tg.wrapped(model, path, BiasLayer, BiasLayer)
        layer.add(name)
        layers.append(layer)
    return layers


register_method(MethodSpec(peft_type="BITFIT", config_cls=BitFitConfig, plan=plan, inject=inject))
