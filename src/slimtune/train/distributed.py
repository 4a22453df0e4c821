"""Multi-process training under torchrun: process-group set-up (gloo on CPU, NCCL on CUDA), DDP or FSDP2
wrapping, and the few collectives the trainer needs. In a single process every helper is a cheap no-op.

Only trainable parameters get gradients (DDP registers hooks for ``requires_grad`` parameters only), so a
frozen base costs no gradient traffic. Rank 0 alone writes checkpoints, metrics and the adapter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from slimtune.errors import ConfigError

log = logging.getLogger(__name__)

Strategy = Literal["ddp", "fsdp2"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_environment() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    try:
        return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from exc


def init_distributed(device: str | torch.device | None = None) -> DistEnv:
    """Join the process group torchrun describes (idempotent); picks this rank's CUDA device if any."""
    rank, world, local = env_from_environment()
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if use_cuda:
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu") if device is None else torch.device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
        log.info("joined process group: rank %d of %d (%s, %s)", rank, world, backend, dev)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap(model: nn.Module, env: DistEnv, strategy: Strategy = "ddp") -> nn.Module:
    """The model as the training step should call it: itself, DDP-wrapped, or sharded in place by FSDP2."""
    if not env.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=False)
    if strategy == "fsdp2":
        return shard_fsdp2(model)
    raise ConfigError(f"distributed strategy must be 'ddp' or 'fsdp2', got {strategy!r}")


def shard_fsdp2(model: nn.Module) -> nn.Module:
    """Shard each transformer block (modules in a ModuleList of blocks), then the root, with FSDP2."""
    from torch.distributed.fsdp import fully_shard

    blocks = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    log.info("FSDP2: sharded %d blocks and the root", len(blocks))
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place and needs no unwrapping)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of ``values`` over all processes (float64 on the wire, so sums are order-robust)."""
    if not env.distributed:
        return values
    out = values.to(device=_comm_device(env), dtype=torch.float64)
    dist.all_reduce(out)
    return out.to(values.device)


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``obj`` from every rank (in-memory transport only; nothing is written to disk)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(flag: bool, env: DistEnv) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not env.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=_comm_device(env))
    dist.broadcast(t, 0)
    return bool(t.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def _comm_device(env: DistEnv) -> torch.device:
    return env.device if dist.get_backend() == "nccl" else torch.device("cpu")


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
