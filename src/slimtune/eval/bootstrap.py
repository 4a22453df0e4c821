"""Percentile bootstrap confidence intervals on per-example scores, seeded and vectorised: one run's
metric, a paired comparison of two runs on the same examples, and the difference of two independent sets
(the generalisation gap)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from slimtune.errors import ConfigError

__all__ = ["Interval", "PairedComparison", "bootstrap_ci", "paired_bootstrap", "resample_indices",
           "two_sample_bootstrap"]

#: statistic(values[idx]) for an index matrix idx of shape (B, n) -> (B,) values
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int

    @property
    def width(self) -> float:
        return self.high - self.low

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence,
                "n_resamples": float(self.n_resamples)}


@dataclass(frozen=True)
class PairedComparison:
    """B minus A on the same examples: the difference, its interval and a two-sided bootstrap p-value."""

    difference: Interval
    p_value: float

    def as_dict(self) -> dict[str, object]:
        return {"difference": self.difference.as_dict(), "p_value": self.p_value}


def _check(n_resamples: int, confidence: float) -> None:
    if not isinstance(n_resamples, int) or n_resamples < 10:
        raise ConfigError(f"n_resamples must be an integer >= 10, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) indices drawn with replacement by a seeded PCG64 generator."""
    if n < 1:
        raise ConfigError("the bootstrap needs at least one example")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


_CHUNK_CELLS = 20_000_000  # indices per chunk: bounds memory at ~160 MB for any n


def _draws(stat: Statistic, n: int, n_resamples: int, seed: int) -> np.ndarray:
    """statistic over n_resamples resamples, drawn chunk by chunk from one seeded generator."""
    if n < 1:
        raise ConfigError("the bootstrap needs at least one example")
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // n)
    parts = [stat(rng.integers(0, n, size=(min(rows, n_resamples - start), n)))
             for start in range(0, n_resamples, rows)]
    return np.concatenate(parts)


def _interval(estimate: float, draws: np.ndarray, confidence: float) -> Interval:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return Interval(float(estimate), float(low), float(high), confidence, int(draws.shape[0]))


def _mean_of(values: np.ndarray, weights: np.ndarray | None) -> Statistic:
    if weights is None:
        return lambda idx: values[idx].mean(axis=1)
    return lambda idx: values[idx].sum(axis=1) / np.maximum(weights[idx].sum(axis=1), 1e-300)


def _as_1d(name: str, values: np.ndarray | list[float]) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1 or out.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D array of per-example scores, got shape {out.shape}")
    return out


def bootstrap_ci(values: np.ndarray | list[float], *, weights: np.ndarray | list[float] | None = None,
                 statistic: Statistic | None = None, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> Interval:
    """Interval of the mean of ``values`` (or of sum(values) / sum(weights), a token-weighted mean, or of
    ``statistic(idx)`` given the resampled index matrix, e.g. a macro-F1 over resampled predictions)."""
    _check(n_resamples, confidence)
    vals = _as_1d("values", values)
    w = None if weights is None else _as_1d("weights", weights)
    if w is not None and w.shape != vals.shape:
        raise ConfigError(f"weights have shape {w.shape}, values {vals.shape}")
    stat = statistic or _mean_of(vals, w)
    full = np.arange(vals.size)[None, :]
    estimate = float(stat(full)[0])
    return _interval(estimate, _draws(stat, vals.size, n_resamples, seed), confidence)


def paired_bootstrap(a: np.ndarray | list[float], b: np.ndarray | list[float], *, n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """Compare runs A and B scored on the same examples: mean(b - a) with an interval from resampling the
    examples jointly; p-value = twice the smaller share of resampled differences on either side of 0."""
    _check(n_resamples, confidence)
    va, vb = _as_1d("a", a), _as_1d("b", b)
    if va.shape != vb.shape:
        raise ConfigError(f"paired_bootstrap needs scores on the same examples; got {va.size} and {vb.size}")
    diff = vb - va
    draws = _draws(lambda idx: diff[idx].mean(axis=1), diff.size, n_resamples, seed)
    below, above = float((draws <= 0).mean()), float((draws >= 0).mean())
    p_value = min(1.0, 2.0 * min(below, above))
    return PairedComparison(_interval(float(diff.mean()), draws, confidence), p_value)


def two_sample_bootstrap(a: np.ndarray | list[float], b: np.ndarray | list[float], *,
                         weights_a: np.ndarray | list[float] | None = None,
                         weights_b: np.ndarray | list[float] | None = None, n_resamples: int = 1000,
                         confidence: float = 0.95, seed: int = 0) -> Interval:
    """Interval of mean(a) - mean(b) for two independent sets (e.g. in-distribution minus OOD), each
    resampled on its own."""
    _check(n_resamples, confidence)
    va, vb = _as_1d("a", a), _as_1d("b", b)
    wa = None if weights_a is None else _as_1d("weights_a", weights_a)
    wb = None if weights_b is None else _as_1d("weights_b", weights_b)
    sa, sb = _mean_of(va, wa), _mean_of(vb, wb)
    estimate = float(sa(np.arange(va.size)[None, :])[0] - sb(np.arange(vb.size)[None, :])[0])
    draws = _draws(sa, va.size, n_resamples, seed) - _draws(sb, vb.size, n_resamples, seed + 1)
    return _interval(estimate, draws, confidence)
