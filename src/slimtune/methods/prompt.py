"""Prompt tuning (Lester et al. 2021): ``num_virtual_tokens`` trained embeddings prepended to the input
embeddings of a frozen causal LM, saved as PEFT's ``prompt_embeddings`` (PEFT type ``PROMPT_TUNING``).

The call-rewriting helpers at the bottom (binding positional arguments, extending the attention mask,
shifting positions) are shared with prefix tuning, which also puts ``num_virtual_tokens`` in front of the
real ones.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from slimtune.core.layer import AdapterLayer, InputAdapter
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.errors import ConfigError

PromptInit = Literal["random", "text"]

# PEFT fields that would change what a saved prompt means; a non-default value is refused, never ignored
_UNSUPPORTED_FIELDS: dict[str, Any] = {"num_transformer_submodules": 1, "modules_to_save": None}


@dataclass(frozen=True)
class PromptTuningConfig(AdapterConfig):
    """Configuration of one prompt-tuning adapter (causal LMs).

    For ``init="text"`` the config carries the token ids of the text, so that it stays a plain, serialisable
    value and building the adapter needs no tokenizer: ``PromptTuningConfig.from_text(text, tokenizer)``
    tokenizes for you (as PEFT does: ``tokenizer(text)["input_ids"]``, special tokens included).
    """

    peft_type: ClassVar[str] = "PROMPT_TUNING"

    num_virtual_tokens: int = 20
    """How many trained embeddings are prepended to every input."""
    init: PromptInit = "random"
    """"random": N(0, 1) like PEFT's RANDOM; "text": the input embeddings of ``init_token_ids``, repeated or
    truncated to ``num_virtual_tokens`` (PEFT's TEXT)."""
    init_text: str | None = None
    """The text behind ``init_token_ids``; saved as PEFT's prompt_tuning_init_text."""
    init_token_ids: tuple[int, ...] | None = None
    """Token ids of ``init_text`` for ``init="text"``; not saved (a loaded adapter takes its values from the file)."""
    tokenizer_path: str | None = None
    """Name or path of the tokenizer that made ``init_token_ids``; saved as PEFT's tokenizer_name_or_path,
    which PEFT requires for a TEXT config."""

    def __post_init__(self) -> None:
        if isinstance(self.init_token_ids, list):
            object.__setattr__(self, "init_token_ids", tuple(self.init_token_ids))
        check_virtual_tokens("PromptTuningConfig", self.num_virtual_tokens)
        if self.init not in ("random", "text"):
            raise ConfigError(f"PromptTuningConfig.init must be one of random, text; got {self.init!r}")
        if self.init == "text":
            self._check_text_init()

    def _check_text_init(self) -> None:
        ids = self.init_token_ids
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(
                f"PromptTuningConfig.init='text' needs init_token_ids (non-negative ints), got {ids!r}; "
                "build the config with PromptTuningConfig.from_text(text, tokenizer)"
            )
        for name in ("init_text", "tokenizer_path"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"PromptTuningConfig.init='text' needs {name} (PEFT refuses a TEXT config without it), "
                    f"got {value!r}"
                )

    @classmethod
    def from_text(cls, text: str, tokenizer: Any, *, num_virtual_tokens: int = 20,
                  tokenizer_path: str | None = None) -> PromptTuningConfig:
        """A text-initialised config: ``text`` tokenized by ``tokenizer`` (a transformers tokenizer)."""
        if not isinstance(text, str) or not text:
            raise ConfigError(f"PromptTuningConfig.from_text needs a non-empty text, got {text!r}")
        ids = [int(i) for i in tokenizer(text)["input_ids"]]
        path = tokenizer_path or getattr(tokenizer, "name_or_path", None) or None
        if path is None:
            raise ConfigError("the tokenizer has no name_or_path; pass tokenizer_path= (PEFT records it)")
        return cls(num_virtual_tokens=num_virtual_tokens, init="text", init_text=text,
                   init_token_ids=tuple(ids), tokenizer_path=path)

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        config = text_config(model)
        return {
            "peft_type": self.peft_type,
            "num_virtual_tokens": self.num_virtual_tokens,
            "token_dim": embedding_dim(model),
            "num_transformer_submodules": 1,
            "num_attention_heads": config.num_attention_heads,
            "num_layers": config.num_hidden_layers,
            "prompt_tuning_init": self.init.upper(),
            "prompt_tuning_init_text": self.init_text,
            "tokenizer_name_or_path": self.tokenizer_path,
            "tokenizer_kwargs": None,
            "modules_to_save": None,
            "auto_mapping": None,
        }

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> PromptTuningConfig:
        refuse_unsupported(data, _UNSUPPORTED_FIELDS, "prompt tuning")
        # the values come from the file, so the init is only a record; token ids are not saved
        return cls(num_virtual_tokens=int(data.get("num_virtual_tokens", 20)), init="random",
                   init_text=data.get("prompt_tuning_init_text"), tokenizer_path=data.get("tokenizer_name_or_path"))


class PromptEmbedding(InputAdapter):
    """The virtual tokens of one adapter: ``inputs_embeds = cat(prompt_embeddings, embed(input_ids))``.

    As in PEFT, labels get -100 in front and the attention mask n ones. Explicit position ids become
    ``cat(0..n-1, position_ids + n)``; PEFT drops them instead, which is the same for the default 0..T-1.
    """

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.num_virtual_tokens = values.shape[0]
        self.prompt_embeddings = nn.Parameter(values)  # (n_virtual, D)

    def adapter_parameters(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.prompt_embeddings}

    def _prompts(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return self.prompt_embeddings.to(like.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, n, D)

    def prepare(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        kw = call_kwargs(model.forward, args, kwargs)
        refuse_token_type_ids(kw)
        n = self.num_virtual_tokens
        if cached_length(kw) > 0:  # later decoding steps: the virtual tokens are in the cache already
            return (), extend_for_cached_prefix(kw, n)
        embeds = _input_embeds(model, kw)
        batch = embeds.shape[0]
        kw["inputs_embeds"] = torch.cat((self._prompts(batch, embeds), embeds), dim=1)  # (B, n + T, D)
        if kw.get("labels") is not None:
            labels = kw["labels"]
            kw["labels"] = torch.cat((labels.new_full((batch, n), -100), labels), dim=1)
        _extend_mask_and_positions(kw, batch, n, embeds.device)
        return (), kw

    def prepare_generation(self, model: nn.Module, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Generation starts from ``inputs_embeds`` with the prompt in front; ``input_ids`` are passed along,
        so the output holds the input ids and the new tokens, as the base model's ``generate`` returns."""
        kw = generate_kwargs(model, args, kwargs)
        refuse_token_type_ids(kw)
        if cached_length(kw) > 0:
            raise ConfigError("generate() with a pre-filled cache is not supported with prompt tuning; pass no cache")
        embeds = _input_embeds(model, kw, keep_ids=True)
        batch = embeds.shape[0]
        kw["inputs_embeds"] = torch.cat((self._prompts(batch, embeds), embeds), dim=1)  # (B, n + T, D)
        if kw.get("attention_mask") is None:
            kw["attention_mask"] = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        _extend_mask_and_positions(kw, batch, self.num_virtual_tokens, embeds.device)
        return (), kw


def _input_embeds(model: nn.Module, kw: dict[str, Any], keep_ids: bool = False) -> torch.Tensor:
    embeds = kw.pop("inputs_embeds", None)
    ids = kw.get("input_ids") if keep_ids else kw.pop("input_ids", None)
    if embeds is not None and ids is not None and not keep_ids:
        raise ConfigError("give input_ids or inputs_embeds, not both")
    if embeds is not None:
        return embeds
    if ids is None:
        raise ConfigError("prompt tuning needs input_ids or inputs_embeds; got neither")
    return input_embeddings(model)(ids)


def _extend_mask_and_positions(kw: dict[str, Any], batch: int, n: int, device: torch.device) -> None:
    """The virtual tokens are real positions 0..n-1 here (they sit in the sequence, unlike a prefix)."""
    kw["attention_mask"] = extend_mask(kw.get("attention_mask"), n)
    positions = kw.get("position_ids")
    if positions is not None:
        front = torch.arange(n, device=device, dtype=positions.dtype).expand(batch, n)
        kw["position_ids"] = torch.cat((front, positions.expand(batch, -1) + n), dim=1)  # (B, n + T)


def build_input(model: nn.Module, cfg: PromptTuningConfig) -> PromptEmbedding:
    embed = input_embeddings(model)
    weight = embed.weight
    n = cfg.num_virtual_tokens
    if cfg.init == "text":
        ids = list(cfg.init_token_ids or ())
        bad = [i for i in ids if i >= weight.shape[0]]
        if bad:
            raise ConfigError(f"PromptTuningConfig.init_token_ids {bad} are outside the vocabulary ({weight.shape[0]})")
        ids = (ids * math.ceil(n / len(ids)))[:n]  # repeat, then truncate, as PEFT does
        with torch.no_grad():
            values = embed(torch.tensor(ids, device=weight.device)).detach().clone().to(weight.dtype)
    else:
        values = torch.randn(n, weight.shape[1], device=weight.device, dtype=weight.dtype)
    return PromptEmbedding(values)


def plan(model: nn.Module, cfg: PromptTuningConfig) -> list[str]:
    require_causal_lm(model, "PromptTuningConfig")
    return []


def inject(model: nn.Module, cfg: AdapterConfig, name: str, paths: list[str]) -> list[AdapterLayer]:
    return []  # nothing goes into the model: the adapter acts on its inputs


# ----- shared with prefix tuning ------------------------------------------------------------------------------
CACHE_KEYS = ("cache", "past_key_values")  # transformers 5 renamed past_key_values to cache


def check_virtual_tokens(owner: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{owner}.num_virtual_tokens must be a positive integer, got {value!r}")


def refuse_unsupported(data: dict[str, Any], fields: dict[str, Any], method: str) -> None:
    bad = {k: data[k] for k, default in fields.items() if data.get(k, default) not in (default, [], {})}
    if bad:
        raise ConfigError(f"adapter_config.json sets {bad}, which slimtune's {method} does not support yet")


def text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError(f"{type(model).__name__} has no transformers config; prompt/prefix tuning needs one")
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def input_embeddings(model: nn.Module) -> nn.Embedding:
    get = getattr(model, "get_input_embeddings", None)
    embed = get() if callable(get) else None
    if not isinstance(embed, nn.Embedding):
        raise ConfigError(f"{type(model).__name__} has no nn.Embedding input embeddings (get_input_embeddings)")
    return embed


def embedding_dim(model: nn.Module) -> int:
    return int(input_embeddings(model).weight.shape[1])


def require_causal_lm(model: nn.Module, owner: str) -> None:
    """Prompt and prefix tuning are supported on decoder-only ``*ForCausalLM`` models (PEFT's CAUSAL_LM)."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if name.endswith("ForCausalLM") and not getattr(config, "is_encoder_decoder", False):
        input_embeddings(model)
        return
    hint = ""
    if name.endswith("ForSequenceClassification"):
        hint = (" PEFT's SEQ_CLS prompt learning also trains and saves the classifier head (modules_to_save), "
                "which slimtune's prompt/prefix tuning does not carry yet;")
    raise ConfigError(
        f"{owner} supports decoder-only causal LMs (a *ForCausalLM model); {name} is not one.{hint} "
        "use LoRA for this model, or a causal LM"
    )


def call_kwargs(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``fn(*args, **kwargs)`` as keyword arguments only, so that inputs can be found by name."""
    if not args:
        return dict(kwargs)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]
    if len(args) > len(names):
        raise ConfigError(f"{len(args)} positional arguments given; the model takes at most {len(names)}")
    named = dict(zip(names, args, strict=False))
    twice = sorted(set(named) & set(kwargs))
    if twice:
        raise ConfigError(f"arguments {twice} were given both by position and by name")
    return {**named, **kwargs}


def generate_kwargs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    kw = call_kwargs(getattr(model, "generate"), args, kwargs)  # noqa: B009  (typed as a module attribute)
    inputs = kw.pop("inputs", None)
    if inputs is not None:
        if kw.get("input_ids") is not None:
            raise ConfigError("generate() got both inputs and input_ids; pass one")
        kw["input_ids"] = inputs
    return kw


def refuse_token_type_ids(kw: dict[str, Any]) -> None:
    if kw.get("token_type_ids") is not None:
        raise ConfigError(
            "token_type_ids are not supported with prompt/prefix tuning (PEFT drops them); leave them out"
        )


def find_cache(kw: dict[str, Any]) -> Any:
    return next((kw[k] for k in CACHE_KEYS if kw.get(k) is not None), None)


def cached_length(kw: dict[str, Any]) -> int:
    cache = find_cache(kw)
    return int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0


def extend_mask(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``n`` ones on the left of a 2D (B, T) attention mask; None stays None (attend to everything)."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise ConfigError(f"prompt/prefix tuning needs a 2D (batch, seq) attention_mask, got shape {tuple(mask.shape)}")
    return torch.cat((mask.new_ones(mask.shape[0], n), mask), dim=1)  # (B, n + T)


def extend_for_cached_prefix(kw: dict[str, Any], n: int) -> dict[str, Any]:
    """The ``n`` virtual tokens sit in the key/value cache: the mask covers them, positions count them."""
    kw["attention_mask"] = extend_mask(kw.get("attention_mask"), n)
    if kw.get("position_ids") is not None:
        kw["position_ids"] = kw["position_ids"] + n
    return kw


register_method(MethodSpec(peft_type="PROMPT_TUNING", config_cls=PromptTuningConfig, plan=plan, inject=inject,
                           build_input=build_input))
