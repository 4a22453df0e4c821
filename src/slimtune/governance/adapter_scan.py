"""Adapter weight scan: non-finite values, tensors whose norm is far off their peers (same role, e.g. every
lora_A), and a spectral outlier score (top singular value over the median), for each matrix and for the
B @ A product of each LoRA pair. A planted or corrupted adapter tends to show up in one of these.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a scan runs, so that importing governance stays light
    import torch

from slimtune.errors import CorruptFileError, UnsafeFormatError

_LAYER_INDEX = re.compile(r"\.\d+\.")


@dataclass
class TensorFinding:
    """One tensor's statistics and its scores against its peers."""

    name: str
    role: str
    shape: list[int]
    norm: float
    non_finite: int
    norm_z: float
    spectral_ratio: float | None = None


@dataclass
class AdapterScanReport:
    """Every tensor's findings, and the ones past the thresholds, worst first."""

    tensors: int
    non_finite: list[str] = field(default_factory=list)
    norm_outliers: list[TensorFinding] = field(default_factory=list)
    spectral_outliers: list[TensorFinding] = field(default_factory=list)
    findings: list[TensorFinding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.non_finite or self.norm_outliers or self.spectral_outliers)

    def to_dict(self, include_all: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["clean"] = self.clean
        if not include_all:
            out.pop("findings")
        return out


def role_of(name: str) -> str:
    """The role of a tensor: its name with layer indices removed (``...layers.3.q_proj.lora_A.weight`` ->
    ``...layers.*.q_proj.lora_A.weight``), so peers are the same tensor in other layers."""
    return _LAYER_INDEX.sub(".*.", f".{name}.")[1:-1]


def robust_z(values: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """(x - median) / scale, scale = max(1.4826 * MAD, floor * |median|).

    The floor matters: peers such as the lora_A of every layer have nearly equal norms, and a MAD of almost
    nothing would turn a 2 % difference into a large z-score; "far off its peers" means relatively far.
    """
    import torch

    median = values.median()
    mad = (values - median).abs().median() * 1.4826
    scale = torch.maximum(mad, floor * median.abs())
    if float(scale) == 0.0:
        return torch.where(values != median, torch.full_like(values, float("inf")), torch.zeros_like(values))
    return (values - median) / scale


def spectral_ratio(matrix: torch.Tensor, rank: int | None = None) -> float:
    """Top singular value over the median of the top ``rank`` ones (1 for a flat spectrum; large for a
    spike). A LoRA product B @ A has rank r: the zeros beyond it are not part of its spectrum."""
    import torch

    s = torch.linalg.svdvals(matrix.detach().to(torch.float32))[:rank]
    median = float(s.median())
    return float(s[0]) / median if median > 0 else float("inf")


def _pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    pairs = {}
    for name, a in state.items():
        if "lora_A" in name.split("."):
            b_name = name.replace("lora_A", "lora_B")
            b = state.get(b_name)
            if b is not None and a.ndim == 2 and b.ndim == 2 and b.shape[1] == a.shape[0]:
                pairs[name.replace("lora_A", "lora_BA")] = (b, a)
    return pairs


def scan_state_dict(state: dict[str, torch.Tensor], *, z_threshold: float = 6.0,
                    spectral_threshold: float | None = None) -> AdapterScanReport:
    """Scan a state dict. ``spectral_threshold`` None flags ratios with a robust z over ``z_threshold``
    among the same role; a number flags ratios above it."""
    import torch

    findings = []
    for name, tensor in state.items():
        t = tensor.detach()
        finite = torch.isfinite(t) if t.is_floating_point() else torch.ones_like(t, dtype=torch.bool)
        values = t[finite].to(torch.float64)
        findings.append(TensorFinding(name, role_of(name), list(t.shape), float(values.norm()) if values.numel()
                                      else 0.0, int((~finite).sum()), 0.0,
                                      spectral_ratio(t) if t.ndim == 2 and bool(finite.all()) else None))
    for name, (b, a) in _pairs(state).items():
        product = b.to(torch.float32) @ a.to(torch.float32)  # (out, in): the update LoRA adds to the weight
        ok = bool(torch.isfinite(product).all())
        findings.append(TensorFinding(name, role_of(name), list(product.shape), float(product.norm()) if ok
                                      else float("nan"), 0, 0.0, spectral_ratio(product, a.shape[0]) if ok else None))
    return _score(findings, z_threshold, spectral_threshold)


def _score(findings: list[TensorFinding], z_threshold: float, spectral_threshold: float | None
           ) -> AdapterScanReport:
    import torch

    report = AdapterScanReport(len(findings), findings=findings)
    report.non_finite = [f.name for f in findings if f.non_finite]
    by_role: dict[str, list[TensorFinding]] = defaultdict(list)
    for f in findings:
        by_role[f.role].append(f)
    for peers in by_role.values():
        if len(peers) < 3:  # a robust z-score needs peers; one or two tensors have none to differ from
            continue
        z = robust_z(torch.tensor([p.norm for p in peers], dtype=torch.float64))
        for p, value in zip(peers, z.tolist(), strict=True):
            p.norm_z = value
        ratios = [p for p in peers if p.spectral_ratio is not None]
        if spectral_threshold is None and len(ratios) >= 3:
            rz = robust_z(torch.tensor([p.spectral_ratio for p in ratios], dtype=torch.float64)).tolist()
            report.spectral_outliers += [p for p, v in zip(ratios, rz, strict=True) if v > z_threshold]
    if spectral_threshold is not None:
        report.spectral_outliers = [f for f in findings if (f.spectral_ratio or 0) > spectral_threshold]
    report.norm_outliers = sorted((f for f in findings if abs(f.norm_z) > z_threshold), key=lambda f: -abs(f.norm_z))
    report.spectral_outliers.sort(key=lambda f: -(f.spectral_ratio or 0))
    return report


def scan_adapter(path: str | os.PathLike[str], **kwargs: Any) -> AdapterScanReport:
    """Scan an adapter file (or a folder holding adapter_model.safetensors). Only safetensors is read:
    pickle files are refused, never unpickled."""
    p = Path(path)
    if p.is_dir():
        p = p / "adapter_model.safetensors"
    if p.suffix != ".safetensors":
        raise UnsafeFormatError(f"{p}: only .safetensors adapters are scanned; pickle formats are refused")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(p))
    except (SafetensorError, OSError) as exc:
        raise CorruptFileError(f"{p}: not a readable safetensors file ({exc})") from None
    return scan_state_dict(state, **kwargs)
