"""Automatic rollback: after an alias moves (a promotion seen by the server), watch the new version's quality
proxy (mean token log-probability of its outputs); if its window mean falls more than ``max_drop`` below the
baseline (the previous version's live mean, else the new version's reference profile), roll the alias back
through ``Registry.rollback`` with a reason. Every rollback is logged, audited and counted."""

from __future__ import annotations

import logging
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path

from slimtune.errors import SlimtuneError
from slimtune.governance.audit import AuditLog
from slimtune.registry import VersionRef
from slimtune.serve.adapters import AdapterManager, Resolved
from slimtune.serve.config import RollbackPolicy
from slimtune.serve.drift import DriftMonitor
from slimtune.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)
MIN_BASELINE = 10


@dataclass
class _Watch:
    name: str
    alias: str
    old: int
    new: int
    baseline: float | None
    values: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class RollbackEvent:
    """One automatic rollback, as logged and audited."""

    name: str
    alias: str
    from_version: int
    to_version: int
    baseline: float
    observed: float
    reason: str


class AutoRollback:
    """The policy, fed by alias moves (from the resolver) and finished requests (from the batch worker)."""

    def __init__(self, policy: RollbackPolicy, manager: AdapterManager, monitor: DriftMonitor,
                 metrics: ServeMetrics, audit_path: Path | None = None) -> None:
        self.policy, self.manager, self.monitor, self.metrics = policy, manager, monitor, metrics
        self.audit = AuditLog(audit_path) if audit_path is not None else None
        self.events: list[RollbackEvent] = []
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._lock = threading.Lock()

    def alias_moved(self, name: str, alias: str, old: int, new: int) -> None:
        if not self.policy.enabled or alias not in self.policy.aliases:
            return
        with self._lock:
            if any(e.name == name and e.alias == alias and e.to_version == new for e in self.events[-5:]):
                return  # the move is our own rollback
            self._watches[(name, alias)] = _Watch(name, alias, old, new, self._baseline(name, old, new))
        log.info("watching %s@%s after its move %d -> %d", name, alias, old, new)

    def _baseline(self, name: str, old: int, new: int) -> float | None:
        live = self.monitor.current(str(VersionRef(name, old))).mean_logprob
        if len(live) >= MIN_BASELINE:
            return statistics.fmean(live)
        ref = self.monitor.profile(str(VersionRef(name, new)))
        return statistics.fmean(ref.mean_logprob) if ref is not None and ref.mean_logprob else None

    def observe(self, target: Resolved, mean_logprob: float | None) -> None:
        if mean_logprob is None or target.ref is None:
            return
        decided: list[_Watch] = []
        with self._lock:
            for key, watch in list(self._watches.items()):
                if watch.name == target.ref.name and watch.new == target.ref.version:
                    watch.values.append(mean_logprob)
                    if len(watch.values) >= self.policy.window:
                        decided.append(self._watches.pop(key))
        for watch in decided:
            self._decide(watch)

    def _decide(self, watch: _Watch) -> None:
        observed = statistics.fmean(watch.values)
        if watch.baseline is None:
            log.info("%s@%s: no baseline for the quality proxy; no rollback decision", watch.name, watch.alias)
            return
        if watch.baseline - observed <= self.policy.max_drop:
            log.info("%s:%d kept at %s: mean log-prob %.3f vs baseline %.3f", watch.name, watch.new, watch.alias,
                     observed, watch.baseline)
            return
        reason = (f"auto-rollback: mean token log-prob of {watch.name}:{watch.new} over {len(watch.values)} requests "
                  f"was {observed:.3f}, {watch.baseline - observed:.3f} below the baseline {watch.baseline:.3f} "
                  f"(max drop {self.policy.max_drop})")
        try:
            result = self.manager.registry().rollback(watch.name, watch.alias, reason=reason)
        except SlimtuneError as exc:
            log.error("auto-rollback of %s@%s failed: %s", watch.name, watch.alias, exc)
            return
        self.manager.forget(f"{watch.name}@{watch.alias}")
        event = RollbackEvent(watch.name, watch.alias, watch.new, result.ref.version, watch.baseline, observed, reason)
        with self._lock:
            self.events.append(event)
        self.metrics.rollbacks.labels(name=watch.name, alias=watch.alias).inc()
        log.warning("%s", reason, extra={"event": "auto_rollback", "model_name": watch.name, "alias": watch.alias,
                                         "to_version": result.ref.version})
        if self.audit is not None:
            self.audit.append("serve.auto_rollback", f"{watch.name}@{watch.alias}",
                              {"from": watch.new, "to": result.ref.version, "baseline": watch.baseline,
                               "observed": observed, "reason": reason})
