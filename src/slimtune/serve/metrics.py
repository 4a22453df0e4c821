"""Prometheus metrics of one server (its own CollectorRegistry, so several apps can live in one process)."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class _Live:
    """Small in-process summaries for the status page (Prometheus is for scrapers)."""

    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(lambda: deque(maxlen=200)))


class ServeMetrics:
    """Counters and histograms, labelled by route, adapter (``NAME:VERSION`` or the base) and status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slimtune_requests", "HTTP requests", ["route", "adapter", "status"], registry=r)
        self.errors = Counter("slimtune_errors", "HTTP requests that failed", ["route", "adapter", "status"],
                              registry=r)
        self.latency = Histogram("slimtune_request_latency_seconds", "Request latency", ["adapter"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_in = Counter("slimtune_tokens_in", "Prompt tokens", ["adapter"], registry=r)
        self.tokens_out = Counter("slimtune_tokens_out", "Generated tokens", ["adapter"], registry=r)
        self.batch_size = Histogram("slimtune_batch_size", "Requests per model batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_time = Histogram("slimtune_queue_time_seconds", "Time from admission to batch start",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.rollbacks = Counter("slimtune_auto_rollbacks", "Automatic alias rollbacks", ["name", "alias"],
                                 registry=r)
        self.live = _Live()
        self._lock = threading.Lock()

    def observe_request(self, route: str, adapter: str, status: int, seconds: float) -> None:
        labels = {"route": route, "adapter": adapter, "status": str(status)}
        self.requests.labels(**labels).inc()
        if status >= 400:
            self.errors.labels(**labels).inc()
        if route.startswith("/v1/") and status < 400:
            self.latency.labels(adapter=adapter).observe(seconds)
        with self._lock:
            self.live.requests[adapter] += 1
            if status >= 400:
                self.live.errors[adapter] += 1
            elif route.startswith("/v1/"):
                self.live.latency[adapter].append(seconds)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per adapter: requests, errors, p50 and p95 latency (seconds) of the last 200 requests."""
        with self._lock:
            out: dict[str, dict[str, float]] = {}
            for adapter in sorted(set(self.live.requests)):
                lat = sorted(self.live.latency.get(adapter, ()))
                out[adapter] = {"requests": self.live.requests[adapter], "errors": self.live.errors.get(adapter, 0),
                                "p50": lat[len(lat) // 2] if lat else 0.0,
                                "p95": lat[min(len(lat) - 1, int(len(lat) * 0.95))] if lat else 0.0}
            return out

    def render(self) -> bytes:
        return generate_latest(self.registry)
