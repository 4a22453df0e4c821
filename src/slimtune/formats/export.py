"""Shipping an adapter: a merged model in the transformers layout (safetensors), and ONNX export of the
merged model, optionally int8-quantised for edge devices, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.errors import SlimtuneError
from slimtune.formats.safe import write_json

log = logging.getLogger(__name__)


class ExportError(SlimtuneError):
    """An export failed its equivalence check or could not be written."""


@dataclass
class MergeReport:
    out_dir: str
    max_abs_diff: float
    size_bytes: int


def save_merged(adapted: Any, tokenizer: Any, out_dir: Path, check_ids: torch.Tensor) -> MergeReport:
    """Merge the active adapters, write model + tokenizer with save_pretrained (atomically, via a temporary
    folder), reload the result with from_pretrained and check its outputs against the unmerged adapter."""
    adapted.eval()
    with torch.no_grad():
        expected = _first_output(adapted(input_ids=check_ids))
    plain = adapted.merge_and_unload()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        diff = _reload_diff(type(plain), tmp, check_ids, expected)
        if diff > 1e-4 * max(1.0, expected.abs().max().item()):
            raise ExportError(f"the merged model differs from the unmerged adapter by {diff:.3g}; nothing written")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return MergeReport(str(out_dir), diff, size)


def _reload_diff(cls: Any, folder: Path, ids: torch.Tensor, expected: torch.Tensor) -> float:
    again = cls.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        return (_first_output(again(input_ids=ids)) - expected).abs().max().item()


def _first_output(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


class _Logits(nn.Module):
    """The graph that is exported: ids and mask in, logits out, no cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _first_output(self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))


@dataclass
class OnnxReport:
    path: str
    size_bytes: int
    max_abs_diff: float
    latency_ms_p50: float
    torch_latency_ms_p50: float
    int8_path: str | None = None
    int8_size_bytes: int | None = None
    int8_latency_ms_p50: float | None = None
    int8_top1_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(merged: nn.Module, out_dir: Path, vocab_size: int, quantize: bool = False,
                seq_len: int = 32, seed: int = 0, sample_ids: torch.Tensor | None = None) -> OnnxReport:
    """Export the merged model to ONNX, check it with onnxruntime, optionally add an int8 (dynamic) copy.

    ``sample_ids`` (B, T) of real text make the int8 agreement meaningful; random ids are used otherwise."""
    import onnxruntime as ort

    out_dir.mkdir(parents=True, exist_ok=True)
    graph = _Logits(merged.eval())
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (2, seq_len), generator=g)
    mask = torch.ones_like(ids)
    path = out_dir / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(graph, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=18, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask",
                                                                                   "logits")})
    check = sample_ids if sample_ids is not None else torch.randint(0, vocab_size, (3, seq_len), generator=g)
    check_mask = torch.ones_like(check)
    if sample_ids is None:
        check_mask[0, : seq_len // 4] = 0  # a left-padded row
    with torch.no_grad():
        expected = graph(check, check_mask).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": check.numpy(), "attention_mask": check_mask.numpy()}
    got = session.run(None, feeds)[0]
    diff = float(abs(got - expected).max())
    if diff > 1e-3 * max(1.0, float(abs(expected).max())):
        raise ExportError(f"ONNX output differs from PyTorch by {diff:.3g}; the export is wrong, nothing kept")
    report = OnnxReport(str(path), _size(path), diff, _latency(lambda: session.run(None, feeds)),
                        _latency(lambda: graph(check, check_mask)))
    if quantize:
        _add_int8(report, path, feeds, expected)
    write_json(out_dir / "export_report.json", report.to_dict())
    return report


def _add_int8(report: OnnxReport, path: Path, feeds: dict[str, Any], expected: Any) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = path.with_name("model.int8.onnx")
    quantize_dynamic(str(path), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    report.int8_path, report.int8_size_bytes = str(int8), _size(int8)
    report.int8_top1_agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
    report.int8_latency_ms_p50 = _latency(lambda: session.run(None, feeds))


def _size(path: Path) -> int:
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def _latency(fn: Any, warmup: int = 2, runs: int = 7) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
