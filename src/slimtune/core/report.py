"""Parameter accounting: what trains, what is frozen, per module type, as numbers and as a table."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from torch import nn

from slimtune.core.layer import AdapterLayer


@dataclass(frozen=True)
class ParameterReport:
    trainable: int
    total: int
    by_type: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Module type -> (trainable, total) parameters owned by modules of that type."""

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def table(self) -> Table:
        table = Table(title="parameters")
        for col in ("module type", "trainable", "total", "share"):
            table.add_column(col, justify="left" if col == "module type" else "right")
        for kind, (t, n) in sorted(self.by_type.items(), key=lambda kv: -kv[1][1]):
            table.add_row(kind, f"{t:,}", f"{n:,}", f"{t / n:.4%}" if n else "-")
        table.add_row("all", f"{self.trainable:,}", f"{self.total:,}", f"{self.share:.4%}", style="bold")
        return table

    def __str__(self) -> str:
        buffer = io.StringIO()
        Console(file=buffer, width=100, force_terminal=False, color_system=None).print(self.table())
        return buffer.getvalue()


def build_report(model: nn.Module) -> ParameterReport:
    owner: dict[int, str] = {}
    params: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), type(module).__name__)
            params[id(p)] = p
    for module in model.modules():  # an adapter layer owns everything in it but its base layer
        if isinstance(module, AdapterLayer):
            base = {id(p) for p in module.base_layer.parameters()}
            for p in module.parameters():
                if id(p) not in base:
                    owner[id(p)] = type(module).__name__
    by_type: dict[str, list[int]] = {}
    for pid, p in params.items():
        row = by_type.setdefault(owner[pid], [0, 0])
        row[0] += p.numel() if p.requires_grad else 0
        row[1] += p.numel()
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    total = sum(p.numel() for p in params.values())
    return ParameterReport(trainable, total, {k: (v[0], v[1]) for k, v in by_type.items()})
