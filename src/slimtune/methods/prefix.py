"""Prefix tuning (Li & Liang 2021): ``num_virtual_tokens`` trained keys and values in front of every attention
layer of a frozen causal LM, handed to the model as a pre-filled transformers ``DynamicCache``.

Saved as PEFT's ``PREFIX_TUNING``: one tensor ``prompt_embeddings`` of shape
(num_virtual_tokens, num_layers * 2 * kv_dim) with ``kv_dim = num_key_value_heads * head_dim`` (PEFT sizes the
prefix by the key/value heads of grouped-query attention). With ``prefix_projection`` the prefix is produced by
an MLP during training; like PEFT, the file holds the projected prefix only, so a loaded adapter is that prefix
itself (``from_peft_dict`` gives ``prefix_projection=False``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers import DynamicCache

from slimtune.core.layer import InputAdapter
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.errors import AdapterStateError, ConfigError
from slimtune.methods.prompt import (
    CACHE_KEYS,
    cached_length,
    call_kwargs,
    check_virtual_tokens,
    extend_for_cached_prefix,
    find_cache,
    generate_kwargs,
    inject,
    input_embeddings,
    refuse_token_type_ids,
    refuse_unsupported,
    require_causal_lm,
    text_config,
)

PrefixInit = Literal["random", "zero"]

_UNSUPPORTED_FIELDS: dict[str, Any] = {"num_transformer_submodules": 1, "modules_to_save": None}
# configs whose layers differ in key/value shape (PEFT special-cases them); refused rather than half-supported
_HETEROGENEOUS_KEYS = ("per_layer_config", "global_head_dim", "num_global_key_value_heads")


@dataclass(frozen=True)
class PrefixTuningConfig(AdapterConfig):
    """Configuration of one prefix-tuning adapter (causal LMs)."""

    peft_type: ClassVar[str] = "PREFIX_TUNING"

    num_virtual_tokens: int = 20
    """How many key/value positions are put in front of every attention layer."""
    prefix_projection: bool = False
    """Produce the prefix with a two-layer MLP (embedding -> Linear -> tanh -> Linear) while training."""
    encoder_hidden_size: int | None = None
    """Hidden size of that MLP; None: kv_dim, as PEFT defaults it. Only used with prefix_projection."""
    init: PrefixInit = "random"
    """"random": the prefix (or the MLP input) ~ N(0, 1) as PEFT; "zero": PEFT's init_weights="zero"."""

    def __post_init__(self) -> None:
        check_virtual_tokens("PrefixTuningConfig", self.num_virtual_tokens)
        if not isinstance(self.prefix_projection, bool):
            raise ConfigError(
                f"PrefixTuningConfig.prefix_projection must be True or False, got {self.prefix_projection!r}"
            )
        size = self.encoder_hidden_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise ConfigError(
                f"PrefixTuningConfig.encoder_hidden_size must be a positive integer or None, got {size!r}"
            )
        if self.init not in ("random", "zero"):
            raise ConfigError(f"PrefixTuningConfig.init must be one of random, zero; got {self.init!r}")

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        layers, heads, head_dim = kv_geometry(model)
        return {
            "peft_type": self.peft_type,
            "num_virtual_tokens": self.num_virtual_tokens,
            "token_dim": heads * head_dim,
            "num_attention_heads": heads,
            "num_layers": layers,
            "num_transformer_submodules": 1,
            "encoder_hidden_size": self.encoder_hidden_size or heads * head_dim,
            "prefix_projection": self.prefix_projection,
            "init_weights": "zero" if self.init == "zero" else None,
            "modules_to_save": None,
            "auto_mapping": None,
        }

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> PrefixTuningConfig:
        refuse_unsupported(data, _UNSUPPORTED_FIELDS, "prefix tuning")
        # the file holds the (projected) prefix itself, so the loaded adapter has no MLP
        return cls(num_virtual_tokens=int(data.get("num_virtual_tokens", 20)), prefix_projection=False,
                   encoder_hidden_size=data.get("encoder_hidden_size"))


def kv_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(num_layers, num_key_value_heads, head_dim) as PEFT 0.21 derives them from the model config."""
    config = text_config(model)
    fields = config.to_dict() if hasattr(config, "to_dict") else vars(config)  # per_layer_config is a property
    odd = [k for k in _HETEROGENEOUS_KEYS if fields.get(k) is not None]
    if odd:
        raise ConfigError(
            f"{type(model).__name__} has layers of different key/value shapes ({', '.join(odd)}); "
            "slimtune's prefix tuning needs one shape for every layer"
        )
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return int(config.num_hidden_layers), int(kv_heads), int(head_dim)


class PrefixEncoder(InputAdapter):
    """The per-layer key/value prefix of one adapter, as a flat (n, layers * 2 * kv_dim) tensor: directly a
    parameter, or the output of an MLP over n trained embeddings (``prefix_projection``)."""

    def __init__(self, cfg: PrefixTuningConfig, geometry: tuple[int, int, int], like: torch.Tensor) -> None:
        super().__init__()
        self.num_layers, self.kv_heads, self.head_dim = geometry
        self.num_virtual_tokens = n = cfg.num_virtual_tokens
        kv_dim = self.kv_heads * self.head_dim
        flat = self.num_layers * 2 * kv_dim
        device, dtype = like.device, like.dtype
        self.projected = cfg.prefix_projection
        if self.projected:
            hidden = cfg.encoder_hidden_size or kv_dim
            self.embedding = nn.Embedding(n, kv_dim, device=device, dtype=dtype)
            first = nn.Linear(kv_dim, hidden, device=device, dtype=dtype)
            last = nn.Linear(hidden, flat, device=device, dtype=dtype)
            if cfg.init == "zero":
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
            self.transform = nn.Sequential(first, nn.Tanh(), last)  # PEFT's names: transform.0, transform.2
        else:
            make = torch.zeros if cfg.init == "zero" else torch.randn
            self.prompt_embeddings = nn.Parameter(make(n, flat, device=device, dtype=dtype))  # (n, L * 2 * kv_dim)

    def adapter_parameters(self) -> dict[str, torch.Tensor]:
        if not self.projected:
            return {"prompt_embeddings": self.prompt_embeddings}
        return {"embedding.weight": self.embedding.weight,
                **{f"transform.{k}": p for k, p in self.transform.named_parameters()}}

    def prefix(self) -> torch.Tensor:
        """The flat prefix, (n, L * 2 * kv_dim)."""
        return self.transform(self.embedding.weight) if self.projected else self.prompt_embeddings

    def export_state(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.prefix().detach()}  # what PEFT saves, with or without the MLP

    def import_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.projected:
            raise AdapterStateError(
                "a saved prefix cannot be loaded into a prefix_projection adapter (the MLP cannot be inverted); "
                "load it with slimtune.load_adapter, which builds the adapter without the MLP"
            )
        super().import_state(state)

    def key_values(self, batch: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (key, value), each (B, kv_heads, n, head_dim), in PEFT's order: layer l has 2l and 2l+1."""
        n = self.num_virtual_tokens
        flat = self.prefix().to(dtype)
        kv = flat.view(n, self.num_layers * 2, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)  # (2L, H, n, hd)
        kv = kv.unsqueeze(1).expand(-1, batch, -1, -1, -1)  # (2L, B, H, n, hd)
        return [(kv[2 * layer], kv[2 * layer + 1]) for layer in range(self.num_layers)]

    def fill(self, cache: Any, batch: int, dtype: torch.dtype) -> Any:
        """Put the prefix into an empty cache (a fresh DynamicCache when there is none) and return it."""
        cache = DynamicCache() if cache is None else cache
        for layer, (key, value) in enumerate(self.key_values(batch, dtype)):
            cache.update(key, value, layer)
        return cache

    def prepare(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        kw = call_kwargs(model.forward, args, kwargs)
        return (), self._with_prefix(model, kw, _batch_size(kw))

    def prepare_generation(self, model: nn.Module, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """``generate`` gets the pre-filled cache and a mask that covers it; it returns input ids + new tokens."""
        kw = generate_kwargs(model, args, kwargs)
        if cached_length(kw) > 0:
            raise ConfigError("generate() with a pre-filled cache is not supported with prefix tuning; pass no cache")
        ids = kw.get("input_ids")
        if ids is None or kw.get("inputs_embeds") is not None:
            # generate would take the prefix in the cache for the first inputs_embeds positions and cut them off
            raise ConfigError("generate() with prefix tuning needs input_ids (and no inputs_embeds)")
        if kw.get("attention_mask") is None:
            kw["attention_mask"] = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
        return (), self._with_prefix(model, kw, int(ids.shape[0]))

    def _with_prefix(self, model: nn.Module, kw: dict[str, Any], batch: int) -> dict[str, Any]:
        refuse_token_type_ids(kw)
        if model.training and torch.is_grad_enabled() and _checkpointing(model):
            # recomputing a layer in the backward pass would append the prefix to the cache a second time
            raise AdapterStateError("prefix tuning does not work with gradient checkpointing; disable it")
        if cached_length(kw) == 0:  # first step: the cache starts with the prefix (later steps already hold it)
            cache = find_cache(kw)
            for key in CACHE_KEYS:
                kw.pop(key, None)
            kw[_cache_key(model)] = self.fill(cache, batch, _model_dtype(model))
        return extend_for_cached_prefix(kw, self.num_virtual_tokens)


def _checkpointing(model: nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _batch_size(kw: dict[str, Any]) -> int:
    for key in ("input_ids", "inputs_embeds"):
        if kw.get(key) is not None:
            return int(kw[key].shape[0])
    raise ConfigError("prefix tuning needs input_ids or inputs_embeds; got neither")


def _cache_key(model: nn.Module) -> str:
    names = inspect.signature(model.forward).parameters
    return next((k for k in CACHE_KEYS if k in names), CACHE_KEYS[0])


def _model_dtype(model: nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


def plan(model: nn.Module, cfg: PrefixTuningConfig) -> list[str]:
    require_causal_lm(model, "PrefixTuningConfig")
    kv_geometry(model)
    return []


def build_input(model: nn.Module, cfg: PrefixTuningConfig) -> PrefixEncoder:
    return PrefixEncoder(cfg, kv_geometry(model), input_embeddings(model).weight)


register_method(MethodSpec(peft_type="PREFIX_TUNING", config_cls=PrefixTuningConfig, plan=plan, inject=inject,
                           build_input=build_input))
