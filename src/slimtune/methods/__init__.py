"""PEFT methods. Importing this package registers every method with the core."""

from slimtune.methods import bias, lora  # noqa: F401  (registration side effects)
from slimtune.methods.lora import LoraConfig

__all__ = ["LoraConfig"]
