"""``ServeConfig``: every knob of the server in one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slimtune.errors import ConfigError


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature counts as drifted; the defaults are Evidently's."""

    psi_warn: float = 0.1
    """PSI at or above this is reported as a warning."""
    psi_drift: float = 0.2
    """PSI at or above this is drift (binned features: prompt and output length)."""
    ks_p_value: float = 0.05
    """Kolmogorov-Smirnov p-value below this is drift (continuous features)."""
    js_distance: float = 0.1
    """Jensen-Shannon distance at or above this is drift (the hashed token histogram)."""
    psi_epsilon: float = 1e-4
    """Floor on bin fractions so that an empty bin does not make PSI infinite."""
    min_samples: int = 30
    """A window smaller than this is not tested (too few requests to say anything)."""
    drift_share: float = 0.5
    """The version counts as drifted when at least this share of its features drifted (Evidently's dataset
    drift rule; it keeps one chance KS rejection among several features from raising an alarm)."""


@dataclass(frozen=True)
class RollbackPolicy:
    """Roll an alias back when the quality proxy (mean token log-probability) drops after a promotion."""

    enabled: bool = False
    """Off unless asked: a rollback moves production."""
    max_drop: float = 0.5
    """Roll back when baseline mean log-prob minus the new version's window mean exceeds this (nats)."""
    window: int = 50
    """Requests of the new version, after the promotion, that the decision looks at."""
    aliases: tuple[str, ...] = ("production",)
    """Aliases the policy watches."""


@dataclass(frozen=True)
class ServeConfig:
    """Server settings; ``registry`` and ``base`` are what ``slimtune serve`` passes."""

    registry: Path | None = None
    """Registry root that adapters are resolved in (None: the base model only)."""
    base: str = "builtin:smollm2"
    """``builtin:smollm2`` or a local model folder; also the ``model`` name that selects the base."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 8000
    """Port to bind (0: any free port)."""
    keys_file: Path | None = None
    """JSON file of hashed API keys (see ``slimtune.serve.auth``); None: no authentication."""
    max_batch: int = 8
    """Most requests run as one batch."""
    max_wait_ms: float = 10.0
    """How long the batcher waits for more requests once one is queued."""
    max_queue: int = 1024
    """Queued requests beyond this get 503."""
    max_tokens_cap: int = 512
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = 64
    """``max_tokens`` when a request gives none."""
    max_prompt_tokens: int = 2048
    """Longest prompt, in tokens."""
    max_body_bytes: int = 1_000_000
    """Largest request body; larger ones get 413."""
    request_timeout_s: float = 60.0
    """A request still unanswered after this gets 504 and its generation is cancelled."""
    rate_per_s: float = 20.0
    """Default per-key request rate (token bucket refill per second); a key may set its own."""
    rate_burst: float = 40.0
    """Default token bucket size."""
    max_loaded_adapters: int = 16
    """LRU cap on adapters held in the model at once."""
    alias_ttl_s: float = 0.5
    """Aliases are re-resolved in the registry at most this often."""
    monitor_window: int = 500
    """Requests per adapter version kept for drift tests."""
    monitor_hidden_every: int = 1
    """Compute the base model's pooled hidden-state projections (one extra prefill) for every k-th batch only;
    the other batches' requests are monitored without them. 1: every batch."""
    monitor_dir: Path | None = None
    """Where per-request features are appended as JSONL (for ``drift_report``); None: memory only."""
    audit_log: Path | None = None
    """JSONL audit log (slimtune.governance.AuditLog) for automatic rollbacks; the registry audits too."""
    drift: DriftThresholds = field(default_factory=DriftThresholds)
    """Drift test thresholds."""
    rollback: RollbackPolicy = field(default_factory=RollbackPolicy)
    """Automatic rollback policy."""
    json_logs: bool = True
    """``serve()`` installs a JSON log formatter on the root logger."""

    def __post_init__(self) -> None:
        positive = {
            "max_batch": self.max_batch, "max_queue": self.max_queue, "max_tokens_cap": self.max_tokens_cap,
            "default_max_tokens": self.default_max_tokens, "max_prompt_tokens": self.max_prompt_tokens,
            "max_body_bytes": self.max_body_bytes, "request_timeout_s": self.request_timeout_s,
            "rate_per_s": self.rate_per_s, "rate_burst": self.rate_burst,
            "max_loaded_adapters": self.max_loaded_adapters, "monitor_window": self.monitor_window,
            "monitor_hidden_every": self.monitor_hidden_every,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"ServeConfig.{name} must be positive, got {value!r}")
        if self.max_wait_ms < 0 or self.alias_ttl_s < 0:
            raise ConfigError(
                f"ServeConfig.max_wait_ms and alias_ttl_s must be >= 0, got {self.max_wait_ms!r}, {self.alias_ttl_s!r}"
            )
        if self.default_max_tokens > self.max_tokens_cap:
            raise ConfigError(
                f"ServeConfig.default_max_tokens={self.default_max_tokens} exceeds max_tokens_cap={self.max_tokens_cap}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"ServeConfig.port must be in 0..65535, got {self.port!r}")

    @property
    def base_name(self) -> str:
        """The ``model`` value that selects the base model (the last part of a folder path)."""
        if self.base.startswith("builtin:"):
            return self.base.split(":", 1)[1] or "base"
        return Path(self.base).name or "base"
