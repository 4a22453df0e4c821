"""Bottleneck adapters: down-project, nonlinearity, up-project, added to a sub-layer's output (a residual).
Houlsby et al. 2019 place one after the attention output and one after the feed-forward output; Pfeiffer et
al. 2020 only after the feed-forward output. The adapter sits on the output projection, before the block's
own residual and norm, as in both papers.

Saved in the PEFT layout with slimtune's ``peft_type`` "BOTTLENECK": keys
``base_model.model.<projection>.adapter_down.weight`` / ``.bias`` and ``adapter_up.weight`` / ``.bias``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from slimtune.core import targets as tg
from slimtune.core.layer import AdapterLayer
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.errors import ConfigError
from slimtune.methods._checks import check_choice, check_positive_int
from slimtune.methods.lora_layers import is_conv1d, linear_like

#: where the adapters go, by transformers model_type: (attention output projection, feed-forward output)
#: as full-path regexes. To support another architecture, add its two patterns here.
PLACEMENT: dict[str, tuple[str, str]] = {
    "llama": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "mistral": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "qwen2": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "bert": (r".*\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense"),
    "roberta": (r".*\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense"),
    "gpt2": (r".*\.attn\.c_proj", r".*\.mlp\.c_proj"),
}

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class BottleneckConfig(AdapterConfig):
    """Configuration of one bottleneck adapter."""

    peft_type: ClassVar[str] = "BOTTLENECK"

    kind: Literal["houlsby", "pfeiffer"] = "pfeiffer"
    """"houlsby": after attention and after the feed-forward block; "pfeiffer": after the feed-forward only."""
    reduction_factor: int = 16
    """Bottleneck width = hidden size / reduction_factor."""
    nonlinearity: Literal["relu", "gelu", "swish", "tanh"] = "relu"
    """Activation between the two projections."""
    residual: bool = True
    """Add the adapter's output to the sub-layer's (True), or replace it (False: not a no-op at start)."""
    init_std: float = 1e-2
    """Std of the down projection's initial weights; the up projection starts at zero (an exact no-op)."""

    def __post_init__(self) -> None:
        check_choice("BottleneckConfig", "kind", self.kind, ("houlsby", "pfeiffer"))
        check_choice("BottleneckConfig", "nonlinearity", self.nonlinearity, tuple(_ACTIVATIONS))
        check_positive_int("BottleneckConfig", "reduction_factor", self.reduction_factor)

    def patterns(self, model: nn.Module) -> list[str]:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in PLACEMENT:
            raise ConfigError(
                f"bottleneck adapters have no placement for model_type {model_type!r} (known: {sorted(PLACEMENT)}); "
                "add its attention-output and feed-forward-output module patterns to PLACEMENT in "
                "slimtune/methods/bottleneck.py"
            )
        attn, ffn = PLACEMENT[str(model_type)]
        return [attn, ffn] if self.kind == "houlsby" else [ffn]

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        return {"peft_type": self.peft_type, "kind": self.kind, "reduction_factor": self.reduction_factor,
                "nonlinearity": self.nonlinearity, "residual": self.residual, "target_modules": sorted(paths)}

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> BottleneckConfig:
        return cls(kind=data.get("kind", "pfeiffer"), reduction_factor=int(data.get("reduction_factor", 16)),
                   nonlinearity=data.get("nonlinearity", "relu"), residual=bool(data.get("residual", True)))


class BottleneckLayer(AdapterLayer):
    """``y = h + up(act(down(h)))`` with ``h`` the wrapped projection's output."""

    mergeable = False  # the nonlinearity cannot be folded into a weight
    own_children = frozenset({"adapter_down", "adapter_up", "adapter_act"})

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        inner = tg.innermost(base_layer)
        weight = inner.weight
        assert isinstance(weight, torch.Tensor)  # plan() admits Linear / Conv1D only
        self.features = weight.shape[1] if is_conv1d(inner) else weight.shape[0]
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_act = nn.ModuleDict()
        self.residual: dict[str, bool] = {}

    def add(self, name: str, cfg: BottleneckConfig) -> None:
        weight = tg.innermost(self.base_layer).weight
        width = max(1, self.features // cfg.reduction_factor)
        kw: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
        down, up = nn.Linear(self.features, width, **kw), nn.Linear(width, self.features, **kw)
        with torch.no_grad():
            nn.init.normal_(down.weight, std=cfg.init_std)
            nn.init.zeros_(down.bias)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.adapter_down[name], self.adapter_up[name] = down, up
        self.adapter_act[name] = _ACTIVATIONS[cfg.nonlinearity]()
        self.residual[name] = cfg.residual

    def adapter_names(self) -> list[str]:
        return list(self.residual)

    def remove(self, name: str) -> None:
        for table in (self.adapter_down, self.adapter_up, self.adapter_act):
            del table[name]
        del self.residual[name]

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{side}.{k}": p for side in ("adapter_down", "adapter_up")
                for k, p in getattr(self, side)[name].named_parameters()}

    def delta(self, name: str, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        down = self.adapter_down[name]
        h = base.to(down.weight.dtype)  # type: ignore[arg-type]
        out = self.adapter_up[name](self.adapter_act[name](down(h)))
        return out if self.residual[name] else out - h


def plan(model: nn.Module, cfg: BottleneckConfig) -> list[str]:
    patterns = cfg.patterns(model)
    return [p for pattern in patterns
            for p in tg.select(model, pattern, exclude=None, layers=None, supported=linear_like,
                               all_linear=linear_like, field="bottleneck placement")]


def inject(model: nn.Module, cfg: BottleneckConfig, name: str, paths: list[str]) -> list[AdapterLayer]:
    layers: list[AdapterLayer] = []
    for path in paths:
        layer = tg.wrapped(model, path, BottleneckLayer, BottleneckLayer)
        layer.add(name, cfg)
        layers.append(layer)
    return layers


register_method(MethodSpec(peft_type="BOTTLENECK", config_cls=BottleneckConfig, plan=plan, inject=inject))
