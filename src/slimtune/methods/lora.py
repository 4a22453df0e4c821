"""LoRA (Hu et al. 2021): a low-rank update ``B @ A`` beside a frozen Linear, Embedding or GPT-2 Conv1D.

``y = base(x) + scaling * B(A(dropout(x)))`` with ``scaling = alpha / r`` (``alpha / sqrt(r)`` for rsLoRA).
State is keyed by adapter name, and saved with PEFT's key names (``lora_A.weight``, ``lora_embedding_A``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from slimtune.core import targets as tg
from slimtune.core.layer import AdapterLayer
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.errors import ConfigError, TargetError
from slimtune.methods._checks import check_choice, check_positive_int, check_targets
from slimtune.methods.bias import BiasLayer, has_bias
from slimtune.methods.full import place_copies, plan_copies
from slimtune.methods.lora_layers import LoraEmbedding, LoraLinear, is_conv1d, linear_like, supported

InitName = Literal["default", "gaussian", "pissa", "olora"] | str  # also "pissa_niter_<n>"
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
    """"default": A Kaiming-uniform, B zero (a fresh adapter is an exact no-op); "gaussian": A ~ N(0, 1/r);
    "pissa" (or "pissa_niter_<n>" for a fast randomised SVD) and "olora": start at W's principal / QR part."""
    bias: BiasName = "none"
    """Also train biases: of all modules ("all") or of the adapted ones ("lora_only")."""
    use_dora: bool = False
    """DoRA: learn a per-output-channel magnitude beside the low-rank direction (Linear / Conv1D only)."""
    modules_to_save: tuple[str, ...] | None = None
    """Modules trained fully beside the adapter (e.g. a classification head), saved in PEFT's way."""

    def __post_init__(self) -> None:
        for name in ("targets", "exclude", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, list | set):
                object.__setattr__(self, name, tuple(sorted(value)) if isinstance(value, set) else tuple(value))
        if self.layers is not None:
            object.__setattr__(self, "layers", (self.layers,) if isinstance(self.layers, int) else tuple(self.layers))
        object.__setattr__(self, "rank_pattern", dict(self.rank_pattern))
        object.__setattr__(self, "alpha_pattern", dict(self.alpha_pattern))
        self._validate()

    def _validate(self) -> None:
        check_positive_int("LoraConfig", "r", self.r)
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise ConfigError(f"LoraConfig.alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not (self.init in ("default", "gaussian", "pissa", "olora")
                or (isinstance(self.init, str) and re.fullmatch(r"pissa_niter_[1-9]\d*", self.init))):
            raise ConfigError(f"LoraConfig.init must be one of default, gaussian, pissa, pissa_niter_<n>, olora; "
                              f"got {self.init!r}")
        check_choice("LoraConfig", "bias", self.bias, ("none", "all", "lora_only"))
        check_targets("LoraConfig", "targets", self.targets)
        if self.exclude is not None:
            check_targets("LoraConfig", "exclude", self.exclude)
        for key, r in self.rank_pattern.items():
            check_positive_int("LoraConfig", f"rank_pattern[{key!r}]", r)
        for key, a in self.alpha_pattern.items():
            if not isinstance(a, int | float) or a <= 0:
                raise ConfigError(f"LoraConfig.alpha_pattern[{key!r}] must be a positive number, got {a!r}")

    @property
    def converts_on_save(self) -> bool:
        """PiSSA / OLoRA adapters are saved as a plain LoRA of twice the rank (PEFT's conversion)."""
        return self.init not in ("default", "gaussian")

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        k = 2 if self.converts_on_save else 1
        alpha_k = (2**0.5 if self.use_rslora else 2.0) if self.converts_on_save else 1.0
        return {
            "peft_type": self.peft_type,
            "r": self.r * k,
            "lora_alpha": self.alpha * alpha_k,
            "lora_dropout": self.dropout,
            "target_modules": _saved_targets(model, self, paths),
            "exclude_modules": list(self.exclude) if isinstance(self.exclude, tuple) else self.exclude,
            "layers_to_transform": list(self.layers) if self.layers is not None else None,
            "layers_pattern": None,
            "rank_pattern": {key: v * k for key, v in self.rank_pattern.items()},
            "alpha_pattern": {key: v * alpha_k for key, v in self.alpha_pattern.items()},
            "use_rslora": self.use_rslora,
            "init_lora_weights": "gaussian" if self.init == "gaussian" else True,
            "bias": self.bias,
            "fan_in_fan_out": any(is_conv1d(tg.innermost(model.get_submodule(p))) for p in paths),
            "use_dora": self.use_dora,
            "lora_bias": False,
            "modules_to_save": list(self.modules_to_save) if self.modules_to_save else None,
        }

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> LoraConfig:
        _refuse_unsupported(data)
        init = data.get("init_lora_weights", True)
        if init not in (True, False, "gaussian"):
            raise ConfigError(
                f"adapter_config.json has init_lora_weights={init!r}: its weights only fit a base model that "
                "initialisation changed. Re-save it converted to plain LoRA (PEFT: "
                "path_initial_model_for_weight_conversion) and load that"
            )
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
            use_dora=bool(data.get("use_dora", False)),
            modules_to_save=tuple(data["modules_to_save"]) if data.get("modules_to_save") else None,
        )


# PEFT fields that change what the weights mean; a non-default value is refused, never ignored
_UNSUPPORTED_FIELDS: dict[str, Any] = {
    "lora_bias": False, "layer_replication": None, "target_parameters": None,
    "use_qalora": False, "alora_invocation_tokens": None, "trainable_token_indices": None,
    "layers_pattern": None, "megatron_config": None, "use_bdlora": None, "arrow_config": None,
    "kasa_config": None,
}


def _refuse_unsupported(data: dict[str, Any]) -> None:
    bad = {k: data[k] for k, default in _UNSUPPORTED_FIELDS.items() if data.get(k, default) not in (default, [], {})}
    if bad:
        raise ConfigError(
            f"adapter_config.json sets {bad}, which slimtune's LoRA does not support yet; "
            "loading it as plain LoRA would give wrong outputs"
        )


def _saved_targets(model: nn.Module, cfg: LoraConfig, paths: list[str]) -> str | list[str]:
    """PEFT's target_modules: leaf names when they select exactly these modules again, else full paths."""
    if isinstance(cfg.targets, str) and cfg.targets != "all-linear":
        return cfg.targets
    leaves = tg.leaf_names(paths)
    again = tg.select(model, leaves, exclude=cfg.exclude, layers=cfg.layers, supported=supported,
                      all_linear=linear_like)
    return leaves if again == paths else sorted(paths)


def plan(model: nn.Module, cfg: LoraConfig) -> list[str]:
    paths = tg.select(model, cfg.targets, exclude=cfg.exclude, layers=cfg.layers, supported=supported,
                      all_linear=linear_like)
    if cfg.modules_to_save:  # as in PEFT, a fully trained module gets no LoRA inside it
        plan_copies(model, cfg.modules_to_save, "LoraConfig.modules_to_save")
        inside = [re.compile(rf"(^|.*\.){re.escape(m)}($|\..*)") for m in cfg.modules_to_save]
        paths = [p for p in paths if not any(rx.match(p) for rx in inside)]
        if not paths:
            raise TargetError(f"every LoRA target lies inside modules_to_save {list(cfg.modules_to_save)}")
    if cfg.bias == "lora_only" and not any(has_bias(tg.innermost(model.get_submodule(p))) for p in paths):
        raise ConfigError("LoraConfig.bias='lora_only' but none of the targeted modules has a bias; use bias='none'")
    special = cfg.use_dora or cfg.converts_on_save
    embeddings = [p for p in paths if isinstance(tg.innermost(model.get_submodule(p)), nn.Embedding)]
    if special and embeddings:
        raise ConfigError(f"DoRA and PiSSA/OLoRA starts apply to Linear layers; exclude the embeddings {embeddings}")
    return paths


def inject(model: nn.Module, cfg: LoraConfig, name: str, paths: list[str]) -> list[AdapterLayer]:
    layers: list[AdapterLayer] = []
    for path in paths:
        inner = tg.innermost(model.get_submodule(path))
        layer_cls: type[LoraLinear | LoraEmbedding] = LoraEmbedding if isinstance(inner, nn.Embedding) else LoraLinear
        layer = tg.wrapped(model, path, layer_cls, layer_cls)
        r = tg.pattern_value(cfg.rank_pattern, path, cfg.r)
        alpha = tg.pattern_value(cfg.alpha_pattern, path, cfg.alpha)
        layer.add(name, cfg, r, alpha, train_bias=cfg.bias != "none" and has_bias(inner))
        layers.append(layer)
    if cfg.bias == "all":
        layers += _bias_everywhere(model, name, set(paths))
    if cfg.modules_to_save:
        layers += place_copies(model, cfg.modules_to_save, name, "LoraConfig.modules_to_save")
    return layers


def _bias_everywhere(model: nn.Module, name: str, done: set[str]) -> list[AdapterLayer]:
    """bias="all": every other module with a bias gets a bias offset under the same adapter name."""
    layers: list[AdapterLayer] = []
    for path, module in list(model.named_modules()):
        if not path or path in done or ".base_layer" in path or not has_bias(tg.innermost(module)):
            continue
        if isinstance(module, AdapterLayer) and not isinstance(module, BiasLayer):
            continue
        layer = tg.wrapped(model, path, BiasLayer, BiasLayer)
        layer.add(name)
        layers.append(layer)
    return layers


register_method(MethodSpec(peft_type="LORA", config_cls=LoraConfig, plan=plan, inject=inject))
