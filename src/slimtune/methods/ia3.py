"""IA3 (Liu et al. 2022): learned scaling vectors, on the outputs of keys and values and on the input of the
feed-forward down projection. ``y = base(x) * l`` or, for feed-forward modules, ``y = base(x * l)``.
Saved with PEFT's keys (``ia3_l``, shape (out, 1) or (1, in))."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from slimtune.core import targets as tg
from slimtune.core.layer import AdapterLayer
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.errors import ConfigError
from slimtune.methods._checks import check_targets
from slimtune.methods.full import place_copies, plan_copies
from slimtune.methods.lora_layers import is_conv1d, linear_like

# PEFT's defaults per architecture: (targets, feed-forward targets)
IA3_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
}


@dataclass(frozen=True)
class IA3Config(AdapterConfig):
    """Configuration of one IA3 adapter."""

    peft_type: ClassVar[str] = "IA3"

    targets: str | tuple[str, ...] | None = None
    """Modules to scale (suffix names or a full-path regex); None takes the architecture's default."""
    feedforward: str | tuple[str, ...] | None = None
    """Which targets are feed-forward (their input is scaled); None takes the architecture's default."""
    exclude: str | tuple[str, ...] | None = None
    """Modules to leave out."""
    modules_to_save: tuple[str, ...] | None = None
    """Modules trained fully beside the adapter."""

    def __post_init__(self) -> None:
        for name in ("targets", "feedforward", "exclude", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            if value is not None and name != "modules_to_save":
                check_targets("IA3Config", name, getattr(self, name))

    def resolved(self, model: nn.Module) -> tuple[str | tuple[str, ...], str | tuple[str, ...]]:
        if self.targets is not None:
            return self.targets, self.feedforward if self.feedforward is not None else ()
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in IA3_DEFAULTS:
            raise ConfigError(f"IA3 has no default targets for model_type {model_type!r}; pass targets= and "
                              f"feedforward= (known defaults: {sorted(IA3_DEFAULTS)})")
        targets, ff = IA3_DEFAULTS[str(model_type)]
        return targets, self.feedforward if self.feedforward is not None else ff

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        targets, ff = self.resolved(model)
        return {"peft_type": self.peft_type, "target_modules": _listed(targets), "feedforward_modules": _listed(ff),
                "exclude_modules": _listed(self.exclude), "init_ia3_weights": True,
                "fan_in_fan_out": any(is_conv1d(tg.innermost(model.get_submodule(p))) for p in paths),
                "modules_to_save": list(self.modules_to_save) if self.modules_to_save else None}

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> IA3Config:
        return cls(targets=_tupled(data.get("target_modules")),
                   feedforward=_tupled(data.get("feedforward_modules")) or (),
                   exclude=_tupled(data.get("exclude_modules")),
                   modules_to_save=_tupled(data.get("modules_to_save")))  # type: ignore[arg-type]


def _listed(value: str | Sequence[str] | None) -> str | list[str] | None:
    return value if value is None or isinstance(value, str) else sorted(value)


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class IA3Layer(AdapterLayer):
    """Per-adapter scaling of a Linear/Conv1D's output (or input, for feed-forward modules)."""

    own_children = frozenset({"ia3_l"})

    def __init__(self, base_layer: nn.Module, feedforward: bool) -> None:
        super().__init__(base_layer)
        inner = tg.innermost(base_layer)
        weight = inner.weight
        assert isinstance(weight, torch.Tensor)  # plan() admits Linear / Conv1D only
        self.fan_in_fan_out = is_conv1d(inner)
        rows, cols = weight.shape
        self.in_features, self.out_features = (rows, cols) if self.fan_in_fan_out else (cols, rows)
        self.is_feedforward = feedforward
        self.ia3_l = nn.ParameterDict()

    def add(self, name: str) -> None:
        weight = tg.innermost(self.base_layer).weight
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        self.ia3_l[name] = nn.Parameter(torch.ones(shape, device=weight.device, dtype=weight.dtype))  # type: ignore

    def adapter_names(self) -> list[str]:
        return list(self.ia3_l.keys())

    def remove(self, name: str) -> None:
        del self.ia3_l[name]

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        return {"ia3_l": self.ia3_l[name]}

    def _scaled_forward(self, x: torch.Tensor, names: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        if not names:
            return self.base_layer(x, *args, **kwargs)
        scale = torch.ones_like(self.ia3_l[names[0]].flatten())
        for n in names:
            scale = scale * self.ia3_l[n].flatten()
        if self.is_feedforward:
            return self.base_layer((x * scale).to(x.dtype), *args, **kwargs)
        y = self.base_layer(x, *args, **kwargs)
        return (y * scale).to(y.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disabled:
            return self.base_layer(x, *args, **kwargs)
        if self.row_adapters is None:
            return self._scaled_forward(x, [n for n in self.active if n not in self.merged], *args, **kwargs)
        rows = self.row_adapters
        y = self.base_layer(x, *args, **kwargs)
        for name in dict.fromkeys(r for r in rows if r is not None and r in self.ia3_l):
            idx = torch.tensor([i for i, r in enumerate(rows) if r == name], device=x.device)
            y = y.index_copy(0, idx, self._scaled_forward(x.index_select(0, idx), [name], *args, **kwargs))
        return y

    def _scale_view(self, name: str) -> torch.Tensor:
        """l as a factor on the weight in its stored orientation."""
        scale = self.ia3_l[name].detach().float().flatten()
        rows_are_out = not self.fan_in_fan_out
        on_rows = rows_are_out != self.is_feedforward
        return scale[:, None] if on_rows else scale[None, :]

    def delta_weight(self, name: str) -> dict[str, torch.Tensor]:
        tensors = self.base_tensors()
        factor = self._scale_view(name) - 1.0
        delta = {"weight": tensors["weight"].detach().float() * factor}
        if "bias" in tensors and not self.is_feedforward:
            delta["bias"] = tensors["bias"].detach().float() * (self.ia3_l[name].detach().float().flatten() - 1.0)
        return delta

    def unmerge_delta(self, name: str) -> dict[str, torch.Tensor]:
        tensors = self.base_tensors()
        factor = self._scale_view(name)
        weight = tensors["weight"].detach().float()
        delta = {"weight": weight - weight / factor}
        if "bias" in tensors and not self.is_feedforward:
            bias = tensors["bias"].detach().float()
            delta["bias"] = bias - bias / self.ia3_l[name].detach().float().flatten()
        return delta


def plan(model: nn.Module, cfg: IA3Config) -> list[str]:
    targets, _ = cfg.resolved(model)
    if cfg.modules_to_save:
        plan_copies(model, cfg.modules_to_save, "IA3Config.modules_to_save")
    return tg.select(model, targets, exclude=cfg.exclude, layers=None, supported=linear_like,
                     all_linear=linear_like, field="IA3Config.targets")


def inject(model: nn.Module, cfg: IA3Config, name: str, paths: list[str]) -> list[AdapterLayer]:
    _, feedforward = cfg.resolved(model)
    layers: list[AdapterLayer] = []
    for path in paths:
        ff = bool(feedforward) and tg.matches(feedforward, path)
        layer = tg.wrapped(model, path, IA3Layer, functools.partial(IA3Layer, feedforward=ff))
        layer.add(name)
        layers.append(layer)
    if cfg.modules_to_save:
        layers += place_copies(model, cfg.modules_to_save, name, "IA3Config.modules_to_save")
    return layers


register_method(MethodSpec(peft_type="IA3", config_cls=IA3Config, plan=plan, inject=inject))
