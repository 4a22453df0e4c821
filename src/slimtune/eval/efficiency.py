"""What a fine-tune cost and what it costs to serve: trainable parameters, adapter size on disk, training
tokens, wall time and peak memory, estimated FLOPs (full and adapter-aware), a cost estimate from a price
table the user sets, and inference latency percentiles and throughput for base, unmerged and merged."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtune.errors import ConfigError, SlimtuneError

log = logging.getLogger(__name__)

#: currency per device-hour; rough 2026 on-demand cloud prices, meant to be overridden
DEFAULT_PRICES: dict[str, float] = {"cpu": 0.10, "h200": 3.80, "h100": 2.90, "a100": 1.60, "l4": 0.70}


@dataclass(frozen=True)
class PriceTable:
    """Currency per device-hour by device kind ("cpu" is priced per machine, GPUs per device)."""

    prices: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    currency: str = "USD"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> PriceTable:
        """``{"currency": "EUR", "prices": {"cpu": 0.08}}`` or a flat ``{"cpu": 0.08}``, merged onto defaults."""
        raw = dict(raw or {})
        currency = str(raw.pop("currency", "USD"))
        given = raw.pop("prices", raw)
        prices = dict(DEFAULT_PRICES)
        for kind, value in dict(given).items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or not math.isfinite(value):
                raise ConfigError(f"price for {kind!r} must be a non-negative number per device-hour, got {value!r}")
            prices[str(kind).lower()] = float(value)
        return cls(prices, currency)

    def cost(self, device: str, seconds: float, devices: int = 1) -> float:
        kind = device_kind(device)
        if kind not in self.prices:
            raise ConfigError(f"no price for device {kind!r}; known: {sorted(self.prices)}. Add it to the price table")
        return self.prices[kind] * devices * seconds / 3600.0


def device_kind(device: str) -> str:
    """"cpu", or a GPU's short name from its marketing name ("NVIDIA H200" -> "h200")."""
    name = device.lower()
    if name in ("cpu", "") or name.startswith("cpu"):
        return "cpu"
    for token in name.replace("-", " ").split():
        if token[:1] in "ahlbv" and any(ch.isdigit() for ch in token):
            return token
    return name


def current_device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


# ----- parameters, size, FLOPs -----------------------------------------------------------------------
def matmul_parameters(model: nn.Module) -> int:
    """Parameters that take part in matrix products: all but embedding tables (looked up, not multiplied)."""
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in embedding:
            seen.add(id(p))
            total += p.numel()
    return total


def directory_bytes(path: str | Path) -> int:
    root = Path(path)
    if not root.exists():
        return 0
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def flops_full(params: int, tokens: int) -> float:
    """Full fine-tuning: 2NT forward + 4NT backward (input and weight gradients)."""
    return 6.0 * params * tokens


def flops_adapter(params: int, adapter_params: int, tokens: int) -> float:
    """Adapter training: forward 2NT, backward through the frozen weights for input gradients only 2NT, and
    the adapter's own forward, input and weight gradients 6 * N_adapter * T (no weight gradients for N)."""
    return 4.0 * params * tokens + 6.0 * adapter_params * tokens


@dataclass
class TrainingCost:
    steps: int | None = None
    tokens: int | None = None
    wall_time_s: float | None = None
    peak_memory_bytes: int | None = None
    tokens_per_s: float | None = None
    device: str = "cpu"
    source: str = "none"
    loop_seconds: float | None = None
    peak_memory_scope: str | None = None


def training_cost_from_run(run_dir: str | Path) -> TrainingCost:
    """What training cost, from RUN/train_result.json (the trainer writes it at the end of every run with a
    run folder); a run without one (older, or killed) falls back to the last line of RUN/metrics.jsonl."""
    from slimtune.train.callbacks import read_metrics
    from slimtune.train.summary import read_summary

    run = Path(run_dir)
    data = read_summary(run)
    if data is not None:
        return TrainingCost(steps=data.get("steps"), tokens=data.get("tokens_seen"),
                            wall_time_s=data.get("wall_time"), peak_memory_bytes=data.get("peak_memory"),
                            tokens_per_s=data.get("tokens_per_s"), device=data.get("device", "cpu"),
                            source="train_result.json", loop_seconds=data.get("loop_seconds"),
                            peak_memory_scope=data.get("peak_memory_scope"))
    records = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    if not records:
        return TrainingCost()
    last = records[-1]
    cost = TrainingCost(steps=int(last["step"]), tokens=last.get("tokens"), wall_time_s=last.get("time"),
                        source="metrics.jsonl")
    if cost.tokens and cost.wall_time_s:
        cost.tokens_per_s = cost.tokens / cost.wall_time_s
    return cost


def efficiency_summary(model: nn.Module, training: TrainingCost, prices: PriceTable, *, full: bool,
                       adapter_bytes: int | None = None) -> dict[str, Any]:
    """Parameters, size, tokens, time, memory, FLOPs (both estimates) and cost, as one JSON-ready dict."""
    report = getattr(model, "parameter_report", None)
    trainable = report().trainable if callable(report) else sum(p.numel() for p in model.parameters()
                                                                if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    matmul = matmul_parameters(model)
    tokens = training.tokens or 0
    flops = flops_full(matmul, tokens) if full else flops_adapter(matmul - trainable, trainable, tokens)
    out: dict[str, Any] = {"trainable_parameters": trainable, "total_parameters": total,
                           "trainable_share": trainable / total if total else 0.0,
                           "adapter_bytes": adapter_bytes, "training": asdict(training),
                           "flops_estimate": flops, "flops_full_fine_tune": flops_full(matmul, tokens),
                           "currency": prices.currency}
    out["cost"] = prices.cost(training.device, training.wall_time_s) if training.wall_time_s else None
    return out


# ----- latency ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyConfig:
    """How to time inference: random token inputs of ``seq_len`` at each batch size."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    seq_len: int = 64
    warmup: int = 3
    repeats: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("seq_len", "warmup", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "warmup" else 1):
                raise ConfigError(f"LatencyConfig.{name} must be a positive integer, got {value!r}")
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"LatencyConfig.batch_sizes must be positive integers, got {self.batch_sizes!r}")


def _inputs(vocab: int, batch: int, seq_len: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, max(vocab, 2), (batch, seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: nn.Module, inputs: dict[str, torch.Tensor], warmup: int, repeats: int) -> np.ndarray:
    """Seconds per forward over ``repeats`` timed calls after ``warmup`` untimed ones."""
    device = inputs["input_ids"].device
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(device)
                start = time.perf_counter()
                model(**inputs)
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return np.asarray(times)


def latency_row(times: np.ndarray, batch: int, seq_len: int) -> dict[str, float]:
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"batch_size": float(batch), "p50_ms": 1e3 * p50, "p95_ms": 1e3 * p95, "p99_ms": 1e3 * p99,
            "examples_per_s": batch / p50, "tokens_per_s": batch * seq_len / p50}


@contextmanager
def _variant(model: nn.Module, name: str) -> Iterator[None]:
    if name == "base" and hasattr(model, "disabled"):
        with model.disabled():  # type: ignore[operator]
            yield
    elif name == "merged":
        model.merge()  # type: ignore[operator]
        try:
            yield
        finally:
            model.unmerge()  # type: ignore[operator]
    else:
        yield


def benchmark_latency(model: nn.Module, config: LatencyConfig | None = None,
                      variants: tuple[str, ...] = ("base", "unmerged", "merged")) -> dict[str, Any]:
    """{variant: [row per batch size] | {"error": why}} for an AdaptedModel; a plain model (full fine-tuning)
    is timed as it is, under "base" (its architecture is the base's)."""
    config = config or LatencyConfig()
    device = next(model.parameters()).device
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000))
    if not hasattr(model, "disabled"):
        variants = ("base",)
    out: dict[str, Any] = {"seq_len": config.seq_len, "device": current_device_name(device), "variants": {}}
    for name in variants:
        try:
            with _variant(model, name):
                rows = [latency_row(time_forward(model, _inputs(vocab, b, config.seq_len, config.seed + b, device),
                                                 config.warmup, config.repeats), b, config.seq_len)
                        for b in config.batch_sizes]
            out["variants"][name] = rows
        except SlimtuneError as exc:  # e.g. a method that cannot merge: report it, time the others
            log.info("latency of %s skipped: %s", name, exc)
            out["variants"][name] = {"error": str(exc)}
    return out
