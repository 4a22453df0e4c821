"""LoRA (Hu et al. 2021): a low-rank update ``B @ A`` beside a frozen Linear, Embedding or GPT-2 Conv1D.

``y = base(x) + scaling * B(A(dropout(x)))`` with ``scaling = alpha / r`` (``alpha / sqrt(r)`` for rsLoRA).
State is keyed by adapter name, and saved with PEFT's key names (``lora_A.weight``, ``lora_embedding_A``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D  # GPT-2 style: weight stored as (in, out)

from slimtune.core import targets as tg
from slimtune.core.layer import AdapterLayer
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.errors import ConfigError
from slimtune.methods.bias import BiasLayer, BiasOffsets, bias_export, bias_import, has_bias

InitName = Literal["default", "gaussian"]
BiasName = Literal["none", "all", "lora_only"]


@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """Configuration of one LoRA adapter."""

    peft_type: ClassVar[str] = "LORA"

    r: int = 8
    """Rank of the update (the inner size of A and B)."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training; 0 keeps no copy of the input."""
    targets: str | tuple[str, ...] = "all-linear"
    """"all-linear" (every Linear/Conv1D but the output head), module names matched by suffix, or a regex
    string that must match the whole module path."""
    exclude: str | tuple[str, ...] | None = None
    """Modules to leave out, with the same syntax as targets."""
    layers: tuple[int, ...] | None = None
    """Only these block indices (the first numbered segment of a module path)."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank overrides: {suffix regex: r}."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module alpha overrides: {suffix regex: alpha}."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)."""
    init: InitName = "default"
    """"default": A Kaiming-uniform, B zero (a fresh adapter is an exact no-op); "gaussian": A ~ N(0, 1/r)."""
    bias: BiasName = "none"
    """Also train biases: of all modules ("all") or of the adapted ones ("lora_only")."""

    def __post_init__(self) -> None:
        for name in ("targets", "exclude"):
            value = getattr(self, name)
            if isinstance(value, list | set):
                object.__setattr__(self, name, tuple(sorted(value)) if isinstance(value, set) else tuple(value))
        if self.layers is not None:
            object.__setattr__(self, "layers", (self.layers,) if isinstance(self.layers, int) else tuple(self.layers))
        object.__setattr__(self, "rank_pattern", dict(self.rank_pattern))
        object.__setattr__(self, "alpha_pattern", dict(self.alpha_pattern))
        self._validate()

    def _validate(self) -> None:
        _check_positive_int("r", self.r)
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise ConfigError(f"LoraConfig.alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        _check_choice("init", self.init, ("default", "gaussian"))
        _check_choice("bias", self.bias, ("none", "all", "lora_only"))
        _check_targets("targets", self.targets)
        if self.exclude is not None:
            _check_targets("exclude", self.exclude)
        for key, r in self.rank_pattern.items():
            _check_positive_int(f"rank_pattern[{key!r}]", r)
        for key, a in self.alpha_pattern.items():
            if not isinstance(a, int | float) or a <= 0:
                raise ConfigError(f"LoraConfig.alpha_pattern[{key!r}] must be a positive number, got {a!r}")

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        return {
            "peft_type": self.peft_type,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": _saved_targets(model, self, paths),
            "exclude_modules": list(self.exclude) if isinstance(self.exclude, tuple) else self.exclude,
            "layers_to_transform": list(self.layers) if self.layers is not None else None,
            "layers_pattern": None,
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "use_rslora": self.use_rslora,
            "init_lora_weights": True if self.init == "default" else self.init,
            "bias": self.bias,
            "fan_in_fan_out": any(_is_conv1d(tg.innermost(model.get_submodule(p))) for p in paths),
            "use_dora": False,
            "lora_bias": False,
        }

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> LoraConfig:
        _refuse_unsupported(data)
        init = data.get("init_lora_weights", True)
        targets = data.get("target_modules")
        if targets is None:
            raise ConfigError("adapter_config.json has no target_modules; slimtune needs them to place the adapter")
        return cls(
            r=int(data.get("r", 8)),
            alpha=float(data.get("lora_alpha", 8)),
            dropout=float(data.get("lora_dropout", 0.0)),
            targets=targets if isinstance(targets, str) else tuple(targets),
            exclude=data.get("exclude_modules") or None,
            layers=data.get("layers_to_transform"),
            rank_pattern=data.get("rank_pattern") or {},
            alpha_pattern=data.get("alpha_pattern") or {},
            use_rslora=bool(data.get("use_rslora", False)),
            init="gaussian" if init == "gaussian" else "default",
            bias=data.get("bias", "none"),
        )


# PEFT fields that change what the weights mean; a non-default value is refused, never ignored
_UNSUPPORTED_FIELDS: dict[str, Any] = {
    "use_dora": False, "lora_bias": False, "layer_replication": None, "target_parameters": None,
    "use_qalora": False, "alora_invocation_tokens": None, "trainable_token_indices": None,
    "layers_pattern": None, "megatron_config": None, "use_bdlora": None, "arrow_config": None,
    "kasa_config": None, "modules_to_save": None,
}


def _refuse_unsupported(data: dict[str, Any]) -> None:
    bad = {k: data[k] for k, default in _UNSUPPORTED_FIELDS.items() if data.get(k, default) not in (default, [], {})}
    if bad:
        raise ConfigError(
            f"adapter_config.json sets {bad}, which slimtune's LoRA does not support yet; "
            "loading it as plain LoRA would give wrong outputs"
        )


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"LoraConfig.{name} must be a positive integer, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"LoraConfig.{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_targets(name: str, value: object) -> None:
    if isinstance(value, str):
        if value == "all-linear":
            return
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"LoraConfig.{name} {value!r} is not a valid regular expression: {exc}") from exc
    elif not value or not all(isinstance(v, str) and v for v in value):  # type: ignore[attr-defined]
        raise ConfigError(f"LoraConfig.{name} must be a non-empty list of module names or a regex, got {value!r}")


def _weight(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight tensor to adapt")
    return weight


def _linear(table: nn.ModuleDict, name: str) -> nn.Linear:
    return cast(nn.Linear, table[name])  # only Linears are ever put there


def _is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, Conv1D)


def _linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def _supported(module: nn.Module) -> bool:
    return _linear_like(module) or isinstance(module, nn.Embedding)


def _saved_targets(model: nn.Module, cfg: LoraConfig, paths: list[str]) -> str | list[str]:
    """PEFT's target_modules: leaf names when they select exactly these modules again, else full paths."""
    if isinstance(cfg.targets, str) and cfg.targets != "all-linear":
        return cfg.targets
    leaves = tg.leaf_names(paths)
    again = tg.select(model, leaves, exclude=cfg.exclude, layers=cfg.layers, supported=_supported,
                      all_linear=_linear_like)
    return leaves if again == paths else sorted(paths)


class _LoraBase(AdapterLayer):
    """What the Linear/Conv1D and Embedding layers share: ranks, scales and optional bias offsets."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.bias_offsets = BiasOffsets()

    def _register(self, name: str, r: int, alpha: float, rslora: bool, train_bias: bool) -> None:
        self.r[name] = r
        self.scaling[name] = alpha / math.sqrt(r) if rslora else alpha / r
        if train_bias:
            self.bias_offsets.add(name, self.base_tensors()["bias"])

    def _forget(self, name: str) -> None:
        self.r.pop(name)
        self.scaling.pop(name)
        if name in self.bias_offsets:
            del self.bias_offsets.values[name]

    def adapter_names(self) -> list[str]:
        return list(self.r)

    def _bias_params(self, name: str) -> dict[str, torch.Tensor]:
        # PEFT keeps the wrapped module's bias under base_layer.bias
        return {"base_layer.bias": self.bias_offsets.values[name]} if name in self.bias_offsets else {}

    def _bias_delta(self, name: str) -> dict[str, torch.Tensor]:
        return {"bias": self.bias_offsets.offset(name).detach()} if name in self.bias_offsets else {}

    def export_state(self, name: str) -> dict[str, torch.Tensor]:
        state = {k: p.detach() for k, p in self.adapter_parameters(name).items() if k != "base_layer.bias"}
        if name in self.bias_offsets:
            state["base_layer.bias"] = bias_export(self.bias_offsets, name)
        return state

    def import_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        plain = {k: v for k, v in state.items() if k != "base_layer.bias"}
        super().import_state(name, plain)
        if "base_layer.bias" in state:
            bias_import(self.bias_offsets, name, state["base_layer.bias"])


class LoraLinear(_LoraBase):
    """LoRA beside an ``nn.Linear`` or a GPT-2 ``Conv1D`` (whose weight is stored transposed)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        inner = tg.innermost(base_layer)
        self.fan_in_fan_out = _is_conv1d(inner)
        rows, cols = _weight(inner).shape
        self.in_features, self.out_features = (rows, cols) if self.fan_in_fan_out else (cols, rows)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    def add(self, name: str, cfg: LoraConfig, r: int, alpha: float, train_bias: bool) -> None:
        weight = _weight(tg.innermost(self.base_layer))
        a = nn.Linear(self.in_features, r, bias=False, device=weight.device, dtype=weight.dtype)
        b = nn.Linear(r, self.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            if cfg.init == "gaussian":
                nn.init.normal_(a.weight, std=1.0 / r)
            else:
                nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self._register(name, r, alpha, cfg.use_rslora, train_bias)

    def remove(self, name: str) -> None:
        for table in (self.lora_A, self.lora_B, self.lora_dropout):
            del table[name]
        self._forget(name)

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        return {"lora_A.weight": _linear(self.lora_A, name).weight, "lora_B.weight": _linear(self.lora_B, name).weight,
                **self._bias_params(name)}

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a = _linear(self.lora_A, name)
        out = self.lora_B[name](a(self.lora_dropout[name](x.to(a.weight.dtype)))) * self.scaling[name]
        if name in self.bias_offsets:
            out = out + self.bias_offsets.offset(name)
        return out

    def delta_weight(self, name: str) -> dict[str, torch.Tensor]:
        ab = _linear(self.lora_B, name).weight.detach().float() @ _linear(self.lora_A, name).weight.detach().float()
        # ab: (out, in)
        ab = ab * self.scaling[name]
        return {"weight": ab.T if self.fan_in_fan_out else ab, **self._bias_delta(name)}


class LoraEmbedding(_LoraBase):
    """LoRA beside an ``nn.Embedding``: a row lookup into A, then B (PEFT's lora_embedding_A / _B)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        inner = tg.innermost(base_layer)
        self.num_embeddings, self.embedding_dim = _weight(inner).shape
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def add(self, name: str, cfg: LoraConfig, r: int, alpha: float, train_bias: bool) -> None:
        weight = _weight(tg.innermost(self.base_layer))
        a = torch.zeros(r, self.num_embeddings, device=weight.device, dtype=weight.dtype)  # (r, V)
        b = torch.empty(self.embedding_dim, r, device=weight.device, dtype=weight.dtype)  # (D, r)
        if cfg.init == "gaussian":
            nn.init.normal_(a, std=1.0 / r)
            nn.init.zeros_(b)
        else:
            nn.init.normal_(b)
        self.lora_embedding_A[name] = nn.Parameter(a)
        self.lora_embedding_B[name] = nn.Parameter(b)
        self._register(name, r, alpha, cfg.use_rslora, train_bias=False)

    def remove(self, name: str) -> None:
        del self.lora_embedding_A[name]
        del self.lora_embedding_B[name]
        self._forget(name)

    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        return {"lora_embedding_A": self.lora_embedding_A[name], "lora_embedding_B": self.lora_embedding_B[name]}

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        inner = tg.innermost(self.base_layer)
        after_a = F.embedding(x, self.lora_embedding_A[name].T, padding_idx=getattr(inner, "padding_idx", None))
        return (after_a @ self.lora_embedding_B[name].T) * self.scaling[name]  # (..., D)

    def delta_weight(self, name: str) -> dict[str, torch.Tensor]:
        ba = self.lora_embedding_B[name].detach().float() @ self.lora_embedding_A[name].detach().float()  # (D, V)
        return {"weight": ba.T * self.scaling[name]}


def plan(model: nn.Module, cfg: LoraConfig) -> list[str]:
    paths = tg.select(model, cfg.targets, exclude=cfg.exclude, layers=cfg.layers, supported=_supported,
                      all_linear=_linear_like)
    if cfg.bias == "lora_only" and not any(has_bias(tg.innermost(model.get_submodule(p))) for p in paths):
        raise ConfigError("LoraConfig.bias='lora_only' but none of the targeted modules has a bias; use bias='none'")
    return paths


def inject(model: nn.Module, cfg: LoraConfig, name: str, paths: list[str]) -> list[AdapterLayer]:
    layers: list[AdapterLayer] = []
    for path in paths:
        module = model.get_submodule(path)
        inner = tg.innermost(module)
        layer_cls = LoraEmbedding if isinstance(inner, nn.Embedding) else LoraLinear
        layer = module if isinstance(module, layer_cls) else layer_cls(module)
        r = tg.pattern_value(cfg.rank_pattern, path, cfg.r)
        alpha = tg.pattern_value(cfg.alpha_pattern, path, cfg.alpha)
        layer.add(name, cfg, r, alpha, train_bias=cfg.bias != "none" and has_bias(inner))
        if layer is not module:
            replace_module(model, path, layer)
        layers.append(layer)
    if cfg.bias == "all":
        layers += _bias_everywhere(model, name, set(paths))
    return layers


def _bias_everywhere(model: nn.Module, name: str, done: set[str]) -> list[AdapterLayer]:
    """bias="all": every other module with a bias gets a bias offset under the same adapter name."""
    layers: list[AdapterLayer] = []
    for path, module in list(model.named_modules()):
        if not path or path in done or ".base_layer" in path or not has_bias(tg.innermost(module)):
            continue
        if isinstance(module, AdapterLayer) and not isinstance(module, BiasLayer):
            continue
        layer = module if isinstance(module, BiasLayer) else BiasLayer(module)
        layer.add(name)
        if layer is not module:
            replace_module(model, path, layer)
        layers.append(layer)
    return layers


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


register_method(MethodSpec(peft_type="LORA", config_cls=LoraConfig, plan=plan, inject=inject))
