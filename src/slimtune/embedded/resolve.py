"""Which base model an adapter needs: "builtin:smollm2", "builtin:minilm" or a local transformers folder,
given explicitly or read from the adapter's lineage (slimtune.json). Nothing is fetched from a hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimtune.embedded.models import MINILM_ID, SMOLLM2_ID, load_minilm, load_smollm2
from slimtune.errors import ConfigError

BUILTINS = {"builtin:smollm2": SMOLLM2_ID, "builtin:minilm": MINILM_ID}


def base_spec_for(adapter_dir: Path, base: str | None) -> str:
    """The base to load: the one given, else the builtin whose public id the adapter's lineage records."""
    if base:
        return base
    lineage_path = adapter_dir / "slimtune.json"
    recorded = json.loads(lineage_path.read_text()).get("base_model") if lineage_path.is_file() else None
    for spec, model_id in BUILTINS.items():
        if recorded == model_id:
            return spec
    raise ConfigError(
        f"{adapter_dir} was trained on base {recorded!r}, which is not embedded; pass --base with a local "
        "transformers folder of that model (nothing is downloaded)"
    )


def load_base(spec: str, num_labels: int = 2) -> tuple[Any, Any]:
    """Load a base model and tokenizer from a builtin name or a local folder (causal LM, else classifier)."""
    if spec == "builtin:smollm2":
        return load_smollm2()
    if spec == "builtin:minilm":
        return load_minilm(num_labels=num_labels)
    folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"base {spec!r} is neither builtin:smollm2, builtin:minilm nor a local model folder "
                          "with a config.json")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    auto = AutoModelForSequenceClassification if is_classifier else AutoModelForCausalLM
    model = auto.from_pretrained(folder, local_files_only=True)
    has_tokenizer = any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True) if has_tokenizer else None
    return model.eval(), tokenizer


def num_labels_of(adapter_dir: Path) -> int:
    """The classifier size an adapter's saved head implies (2 when it carries none)."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return 2
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
            if key.endswith(("classifier.weight", "score.weight")):
                return int(f.get_slice(key).get_shape()[0])
    return 2
