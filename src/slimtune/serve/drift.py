"""Drift tests of a live window against a reference profile (PSI with a floor, KS, Jensen-Shannon), and the
rolling windows the server keeps per adapter version."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from slimtune.serve.config import DriftThresholds
from slimtune.serve.profile import N_DIRECTIONS, Profile, RequestFeatures

PSI_BINS = 10


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's test."""

    feature: str
    test: str
    """``psi``, ``ks`` or ``js``."""
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    warning: bool = False
    """PSI between the warning and the drift threshold."""


@dataclass(frozen=True)
class DriftResult:
    """Every feature's test for one adapter version; ``tested`` is False when a side had too few samples."""

    adapter: str
    reference_size: int
    current_size: int
    tested: bool
    features: tuple[FeatureDrift, ...] = ()
    drift_share: float = 0.5

    @property
    def drifted_share(self) -> float:
        return sum(f.drifted for f in self.features) / len(self.features) if self.features else 0.0

    @property
    def drifted(self) -> bool:
        """At least ``drift_share`` of the features drifted."""
        return bool(self.features) and self.drifted_share >= self.drift_share

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drifted"] = self.drifted
        out["drifted_share"] = self.drifted_share
        return out


def _bin_counts(ref: np.ndarray, cur: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both samples in bins taken from the reference (quantiles), or per value when few values."""
    values = np.unique(np.concatenate([ref, cur]))
    if len(values) <= 2 * bins:
        edges = (values[:-1] + values[1:]) / 2.0  # one bin per observed value
    else:
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    return ref_counts, cur_counts


def psi(reference: ArrayLike, current: ArrayLike, bins: int = PSI_BINS, epsilon: float = 1e-4) -> float:
    """Population stability index, bin fractions floored at ``epsilon``."""
    ref_c, cur_c = _bin_counts(np.asarray(reference, float), np.asarray(current, float), bins)
    p = np.maximum(ref_c / max(ref_c.sum(), 1), epsilon)
    q = np.maximum(cur_c / max(cur_c.sum(), 1), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: ArrayLike, current: ArrayLike) -> float:
    """Jensen-Shannon distance (natural log, as Evidently) between two histograms."""
    p, q = np.asarray(reference, float), np.asarray(current, float)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    return float(jensenshannon(p / p.sum(), q / q.sum()))


def _psi_test(name: str, ref: Sequence[float], cur: Sequence[float], th: DriftThresholds) -> FeatureDrift:
    value = psi(ref, cur, epsilon=th.psi_epsilon)
    return FeatureDrift(name, "psi", value, None, th.psi_drift, value >= th.psi_drift,
                        th.psi_warn <= value < th.psi_drift)


def _ks_test(name: str, ref: Sequence[float], cur: Sequence[float], th: DriftThresholds) -> FeatureDrift:
    stat, p_value = ks_2samp(np.asarray(ref, float), np.asarray(cur, float))
    return FeatureDrift(name, "ks", float(stat), float(p_value), th.ks_p_value, float(p_value) < th.ks_p_value)


def compare(reference: Profile, current: Profile, thresholds: DriftThresholds | None = None) -> DriftResult:
    """Test every feature of ``current`` against ``reference``."""
    th = thresholds or DriftThresholds()
    name = str(current.adapter or reference.adapter or "base")
    if min(reference.size, current.size) < th.min_samples:
        return DriftResult(name, reference.size, current.size, tested=False)
    tests = [_psi_test("prompt_len", reference.prompt_len, current.prompt_len, th),
             _psi_test("output_len", reference.output_len, current.output_len, th)]
    if len(reference.mean_logprob) >= th.min_samples and len(current.mean_logprob) >= th.min_samples:
        tests.append(_ks_test("mean_logprob", reference.mean_logprob, current.mean_logprob, th))
    enough = min(len(reference.projections), len(current.projections)) >= th.min_samples
    for d in range(N_DIRECTIONS if enough else 0):
        tests.append(_ks_test(f"hidden_proj_{d}", [p[d] for p in reference.projections],
                              [p[d] for p in current.projections], th))
    value = js_distance(reference.token_hist, current.token_hist)
    tests.append(FeatureDrift("tokens", "js", value, None, th.js_distance, value >= th.js_distance))
    return DriftResult(name, reference.size, current.size, True, tuple(tests), th.drift_share)


@dataclass
class _Window:
    features: deque[RequestFeatures]
    total: int = 0
    since: float = field(default_factory=time.time)


class DriftMonitor:
    """Rolling windows of request features per adapter version, tested against their reference profiles.

    Thread-safe: the batch worker records, HTTP handlers read. With ``log_path`` every record is also
    appended as one JSON line (``{"adapter", "time", ...features}``) for ``drift_report``.
    """

    def __init__(self, window: int, thresholds: DriftThresholds | None = None, log_path: Path | None = None) -> None:
        self.window = window
        self.thresholds = thresholds or DriftThresholds()
        self.log_path = log_path
        self._windows: dict[str, _Window] = {}
        self._profiles: dict[str, Profile] = {}
        self._lock = threading.Lock()
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)

    def set_profile(self, adapter: str, profile: Profile) -> None:
        with self._lock:
            self._profiles[adapter] = profile

    def profile(self, adapter: str) -> Profile | None:
        with self._lock:
            return self._profiles.get(adapter)

    def record(self, adapter: str, feats: RequestFeatures) -> None:
        with self._lock:
            win = self._windows.setdefault(adapter, _Window(deque(maxlen=self.window)))
            win.features.append(feats)
            win.total += 1
        if self.log_path is not None:
            line = json.dumps({"adapter": adapter, "time": time.time(), **feats.to_dict()})
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def current(self, adapter: str, last: int | None = None) -> Profile:
        """The window of ``adapter`` (its ``last`` records only, if given) as a Profile."""
        with self._lock:
            win = self._windows.get(adapter)
            feats = list(win.features) if win else []
        return Profile.from_features(adapter, feats[-last:] if last else feats)

    def adapters(self) -> list[str]:
        with self._lock:
            return sorted(set(self._windows) | set(self._profiles))

    def result(self, adapter: str) -> DriftResult | None:
        """The drift tests of ``adapter``'s window; None when it has no reference profile."""
        reference = self.profile(adapter)
        if reference is None:
            return None
        return compare(reference, self.current(adapter), self.thresholds)

    def results(self) -> dict[str, DriftResult | None]:
        return {a: self.result(a) for a in self.adapters()}
