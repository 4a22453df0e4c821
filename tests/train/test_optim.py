"""The optimizer state a checkpoint stores, restored into another AdamW (another process, another device)."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.train.optim import load_optimizer_state, optimizer_state


def _stepped(fused_flag: bool) -> tuple[nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    for _ in range(3):
        layer(torch.randn(4, 5)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    if fused_flag:
        opt.param_groups[0]["fused"] = True  # as a checkpoint written by a fused (GPU) run records it
    return layer, opt


def test_restored_state_continues_the_same_run_and_keeps_this_process_implementation() -> None:
    layer, opt = _stepped(fused_flag=True)
    names = {id(p): n for n, p in layer.named_parameters()}
    tensors, meta = optimizer_state(opt, names)
    assert meta["param_groups"][0]["fused"] is True

    other = nn.Linear(5, 3)
    other.load_state_dict(layer.state_dict())
    fresh = torch.optim.AdamW(other.parameters(), lr=1e-2)
    load_optimizer_state(fresh, {id(p): n for n, p in other.named_parameters()}, tensors, meta)
    assert not fresh.param_groups[0]["fused"]  # a CPU run cannot take the fused kernel: its own choice stands
    for p in other.parameters():
        assert fresh.state[p]["step"].device.type == "cpu" and fresh.state[p]["step"].item() == 3

    opt.param_groups[0]["fused"] = None
    x = torch.randn(4, 5)
    for model, optimizer in ((layer, opt), (other, fresh)):
        model(x).square().sum().backward()
        optimizer.step()
    for a, b in zip(layer.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
