"""slimtune: parameter-efficient fine-tuning and the whole life of a fine-tune.

    import slimtune as st
    model = st.adapt(model, st.LoraConfig(r=16, alpha=32, targets="all-linear"))
    model.save_adapter("out/")
    model = st.load_adapter(base, "out/")
"""

from slimtune import methods as _methods  # noqa: F401  (registers every method)
from slimtune._version import __version__
from slimtune.core import AdaptedModel, AdapterConfig, AdapterLayer, ParameterReport, adapt, register_method
from slimtune.errors import (
    AdapterNameError,
    AdapterStateError,
    ConfigError,
    CorruptFileError,
    FingerprintMismatchError,
    KeyMismatchError,
    LoadError,
    MergeError,
    SlimtuneError,
    TargetError,
    UnknownMethodError,
    UnsafeFormatError,
)
from slimtune.formats.peft import load_adapter, save_adapter
from slimtune.methods import (
    BitFitConfig,
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    SelectiveConfig,
)
from slimtune.registry import uri as _registry_uri  # noqa: F401  (registers registry:// for load_adapter)

__all__ = [
    "AdaptedModel",
    "AdapterConfig",
    "AdapterLayer",
    "AdapterNameError",
    "AdapterStateError",
    "BitFitConfig",
    "BottleneckConfig",
    "ConfigError",
    "CorruptFileError",
    "FingerprintMismatchError",
    "IA3Config",
    "KeyMismatchError",
    "LoadError",
    "LoraConfig",
    "MergeError",
    "ParameterReport",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "SelectiveConfig",
    "SlimtuneError",
    "TargetError",
    "UnknownMethodError",
    "UnsafeFormatError",
    "__version__",
    "adapt",
    "load_adapter",
    "register_method",
    "save_adapter",
]
