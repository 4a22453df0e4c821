"""The adapter core: AdaptedModel, the adapter-layer protocol, method registration, target matching."""

from slimtune.core.layer import AdapterLayer
from slimtune.core.model import AdaptedModel, adapt
from slimtune.core.plugin import AdapterConfig, MethodSpec, register_method
from slimtune.core.report import ParameterReport

__all__ = ["AdaptedModel", "AdapterConfig", "AdapterLayer", "MethodSpec", "ParameterReport", "adapt",
           "register_method"]
