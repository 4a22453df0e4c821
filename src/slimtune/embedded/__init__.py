"""The embedded default: real pretrained weights that install from the package index, loaded offline."""

from slimtune.embedded.models import load_minilm, load_smollm2, smollm2_gguf

__all__ = ["load_minilm", "load_smollm2", "smollm2_gguf"]
