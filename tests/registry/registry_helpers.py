"""Helpers for the registry tests: build adapter and run folders the way the core writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

BASE_FP = "a1" * 32
OTHER_FP = "b2" * 32
TARGETS = ("q_proj", "v_proj")


def adapter_tensors(seed: int, r: int = 4, hidden: int = 16, layers: int = 2) -> dict[str, torch.Tensor]:
    """LoRA A/B tensors with PEFT key names; random, never all zero."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(layers):
        for target in TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            out[f"{prefix}.lora_A.weight"] = torch.randn(r, hidden, generator=gen) + 0.5
            out[f"{prefix}.lora_B.weight"] = torch.randn(hidden, r, generator=gen) + 0.5
    return out


def make_adapter(
    folder: Path,
    seed: int = 0,
    *,
    base_fingerprint: str | None = BASE_FP,
    metrics: dict[str, dict[str, float]] | None = None,
    scans: dict[str, Any] | None = None,
    r: int = 4,
    readme: bool = True,
) -> Path:
    """An adapter folder: adapter_config.json, adapter_model.safetensors, slimtune.json, README.md."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_tensors(seed, r=r), str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": list(TARGETS),
        "lora_dropout": 0.0,
        "bias": "none",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    lineage: dict[str, Any] = {
        "library_version": "0.1.0",
        "git_hash": "deadbeef",
        "base_model": "tiny-llama",
        "created": "2026-12-01T00:00:00Z",
        "seed": seed,
        "datasets": [{"name": "chat-train", "sha256": "00" * 32}],
        "recipe": {"method": "lora", "lr": 1e-3, "r": r},
    }
    if base_fingerprint is not None:
        lineage["base_fingerprint"] = base_fingerprint
    if metrics is not None:
        lineage["metrics"] = metrics
    if scans is not None:
        lineage["scans"] = scans
    (folder / "slimtune.json").write_text(json.dumps(lineage))
    if readme:
        (folder / "README.md").write_text(f"# adapter seed {seed}\n")
    return folder


def make_run(folder: Path, seed: int = 0, eval_metrics: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """A run folder: RUN/adapter/, metrics.jsonl, recipe.yaml and (optionally) eval.json."""
    make_adapter(folder / "adapter", seed, **kwargs)
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (folder / "recipe.yaml").write_text("method: lora\nr: 4\n")
    if eval_metrics is not None:
        (folder / "eval.json").write_text(json.dumps(eval_metrics))
    return folder
