"""Method registration: each PEFT method registers itself here with one call; the core looks methods up by
config type or by PEFT's ``peft_type`` string and never branches on a method's name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from slimtune.errors import ConfigError, UnknownMethodError

if TYPE_CHECKING:
    from slimtune.core.layer import AdapterLayer, InputAdapter


class AdapterConfig:
    """Base of every method config (frozen dataclasses). ``peft_type`` names the method in the PEFT format."""

    peft_type: ClassVar[str] = ""

    def to_peft_dict(self, model: nn.Module, paths: list[str]) -> dict[str, Any]:
        """The adapter_config.json body; ``paths`` are the modules this adapter was injected into."""
        raise NotImplementedError

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        raise NotImplementedError


#: plan(model, config) -> module paths to adapt (raises TargetError, never mutates)
PlanFn = Callable[[nn.Module, Any], list[str]]
#: inject(model, config, name, paths) -> the layers that now hold adapter ``name``
InjectFn = Callable[[nn.Module, Any, str, list[str]], list["AdapterLayer"]]


#: build_input(model, config) -> the InputAdapter of a method that acts on the inputs (prompt, prefix)
InputFn = Callable[[nn.Module, Any], "InputAdapter"]


@dataclass(frozen=True)
class MethodSpec:
    """How the core drives one method: ``plan`` picks modules (never mutating), ``inject`` places layers;
    a method acting on the model's inputs instead gives ``build_input`` (and a plan that returns [])."""

    peft_type: str
    config_cls: type[AdapterConfig]
    plan: PlanFn
    inject: InjectFn
    build_input: InputFn | None = None


_BY_TYPE: dict[str, MethodSpec] = {}
_BY_CONFIG: dict[type, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    _BY_TYPE[spec.peft_type] = spec
    _BY_CONFIG[spec.config_cls] = spec
    return spec


def spec_for_config(config: object) -> MethodSpec:
    spec = _BY_CONFIG.get(type(config))
    if spec is None:
        raise ConfigError(
            f"{type(config).__name__} is not a slimtune method config; use one of: "
            + ", ".join(sorted(c.__name__ for c in _BY_CONFIG))
        )
    return spec


def spec_for_peft_type(peft_type: object) -> MethodSpec:
    spec = _BY_TYPE.get(str(peft_type))
    if spec is None:
        raise UnknownMethodError(
            f"adapter_config.json has peft_type {peft_type!r}, which slimtune does not know; "
            f"known types: {', '.join(sorted(_BY_TYPE))}"
        )
    return spec


def known_peft_types() -> list[str]:
    return sorted(_BY_TYPE)
