"""AdamW over the trainable parameters (``requires_grad`` decides, never names), optional LoRA+ groups, and
the optimizer state as plain tensors plus JSON (what a checkpoint stores; no pickle)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimtune.errors import CheckpointError, ConfigError
from slimtune.train.config import TrainConfig

#: (model, config) -> torch optimizer parameter groups ({"params": [...], "lr": ...}, ...)
ParamGroupFn = Callable[[nn.Module, TrainConfig], list[dict[str, Any]]]

# The adapter-interface keys (PEFT's, relative to an adapter layer) of tensors in LoRA's "B" role.
_B_ROLE_KEYS = ("lora_B.", "lora_embedding_B")


def named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter that requires grad, in the module's registration order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def default_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """One group of all trainable parameters, or two (base lr, lr * ratio for B) with LoRA+."""
    params = [p for _, p in named_trainable(model)]
    if not params:
        raise ConfigError("the model has no trainable parameters (nothing requires grad); add an adapter first")
    if config.loraplus_lr_ratio is None:
        return [{"params": params, "lr": config.lr}]
    b_ids = {id(t) for t in b_role_tensors(model)}
    if not b_ids:
        raise ConfigError("loraplus_lr_ratio is set but the model has no LoRA adapter layers with a B matrix; "
                          "unset it, or pass param_groups= to the Trainer to say which tensors are 'B'")
    rest = [p for p in params if id(p) not in b_ids]
    fast = [p for p in params if id(p) in b_ids]
    return [{"params": rest, "lr": config.lr}, {"params": fast, "lr": config.lr * config.loraplus_lr_ratio}]


def b_role_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Trainable tensors that LoRA layers export under a B key, found through the adapter interface."""
    from slimtune.core.layer import AdapterLayer  # train sits above core; core never imports train

    found: list[torch.Tensor] = []
    for module in model.modules():
        if not isinstance(module, AdapterLayer):
            continue
        for name in module.adapter_names():
            found += [t for k, t in module.adapter_parameters(name).items()
                      if k.startswith(_B_ROLE_KEYS) and t.requires_grad]
    return found


def build_optimizer(model: nn.Module, config: TrainConfig, groups: ParamGroupFn | None = None) -> torch.optim.AdamW:
    param_groups = (groups or default_groups)(model, config)
    trainable = {id(p) for _, p in named_trainable(model)}
    chosen = [p for g in param_groups for p in g["params"]]
    if any(id(p) not in trainable for p in chosen) or len({id(p) for p in chosen}) != len(chosen):
        raise ConfigError("param_groups must list each trainable parameter at most once, and only trainable ones")
    # on a GPU, the fused AdamW: one kernel for every tensor instead of a few per group of tensors (the
    # update is the same; sharded DTensors keep the default implementation)
    fused = bool(chosen) and all(p.is_cuda and type(p) in (torch.Tensor, nn.Parameter) for p in chosen)
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas, eps=config.eps,
                             weight_decay=config.weight_decay, fused=fused or None)


def to_full(t: torch.Tensor) -> torch.Tensor:
    """A local, full copy of ``t`` on the CPU (gathers a sharded DTensor: a collective under FSDP2)."""
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().cpu().clone()


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` placed like ``ref``: same device and dtype, and sharded the same way when ``ref`` is a DTensor."""
    if hasattr(ref, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(ref.dtype), ref.device_mesh, ref.placements)  # type: ignore[attr-defined]
    return full.to(device=ref.device, dtype=ref.dtype)


def optimizer_state(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict[str, torch.Tensor],
                                                                                       dict[str, Any]]:
    """Per-parameter state tensors keyed ``<param name>/<state key>`` and the group hyper-parameters as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    groups: list[dict[str, Any]] = []
    for group in optimizer.param_groups:
        hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
        groups.append({**hyper, "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{names[id(p)]}/{key}"] = to_full(value)
    return tensors, {"param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, names: dict[int, str], tensors: dict[str, torch.Tensor],
                         meta: dict[str, Any]) -> None:
    saved = meta["param_groups"]
    if [g["params"] for g in saved] != [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]:
        raise CheckpointError("the checkpoint's optimizer holds other parameters than this model trains; "
                              "resume with the same model, adapter config and LoRA+ setting")
    for group, stored in zip(optimizer.param_groups, saved, strict=True):
        for key, value in stored.items():
            if key != "params" and key not in _IMPLEMENTATION:
                group[key] = tuple(value) if isinstance(value, list) else value
        on_device = bool(group.get("fused") or group.get("capturable"))  # their step counts live beside the params
        for p in group["params"]:
            prefix = names[id(p)] + "/"
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if state:
                optimizer.state[p] = {k: _step(v, p, on_device) if k == "step" else like(v, p)
                                      for k, v in state.items()}


_IMPLEMENTATION = frozenset({"fused", "foreach", "capturable", "differentiable"})
"""Group entries that say how this process runs AdamW (fused on a GPU, not on the CPU), not what it learnt:
a checkpoint keeps them for the record but does not impose them on the run that resumes it."""


def _step(value: torch.Tensor, param: torch.Tensor, on_device: bool) -> torch.Tensor:
    return value.to(device=param.device, dtype=torch.float32) if on_device else value.detach().cpu().clone()
