"""PEFT methods. Importing this package registers every method with the core."""

from slimtune.methods import bias, bitfit, bottleneck, full, ia3, lora, prefix, prompt  # noqa: F401  (registration)
from slimtune.methods.bitfit import BitFitConfig
from slimtune.methods.bottleneck import BottleneckConfig
from slimtune.methods.full import SelectiveConfig
from slimtune.methods.ia3 import IA3Config
from slimtune.methods.lora import LoraConfig
from slimtune.methods.prefix import PrefixTuningConfig
from slimtune.methods.prompt import PromptTuningConfig

__all__ = ["BitFitConfig", "BottleneckConfig", "IA3Config", "LoraConfig", "PrefixTuningConfig", "PromptTuningConfig",
           "SelectiveConfig"]
