"""Training callbacks: the hook interface, the always-on metrics.jsonl writer and an optional TensorBoard
writer. Callbacks run on rank 0 only; they observe the run and never change it."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


@dataclass
class TrainerState:
    """What callbacks see of a run as it goes."""

    step: int = 0
    max_steps: int = 0
    epoch: int = 0
    tokens_seen: int = 0
    losses: list[float | None] = field(default_factory=list)
    """Per-step training loss; None where it was not finite (the NaN guard skipped that step)."""
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    start_step: int = 0
    """The step this process started (or resumed) from."""


class Callback:
    """Override any of these; each is a no-op by default."""

    def on_train_begin(self, state: TrainerState) -> None:
        """Called once before the first step (also after a resume)."""

    def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        """Called after every optimizer step (or skipped step) with that step's metrics."""

    def on_eval(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        """Called after an evaluation with {"step": ..., "<set>/loss": ..., "<set>/perplexity": ...}."""

    def before_save(self, state: TrainerState) -> None:
        """Called just before a checkpoint is written: make what describes steps <= state.step durable."""

    def on_save(self, state: TrainerState, path: Path) -> None:
        """Called after a checkpoint or the final adapter was written to ``path``."""

    def on_train_end(self, state: TrainerState) -> None:
        """Called once when training stops, for whatever reason (also after an error)."""


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


class MetricsWriter(Callback):
    """RUN/metrics.jsonl: one JSON object per step (step, loss, lr, grad_norm, tokens, tokens_per_s, time),
    plus evaluation lines marked {"eval": ...}. On resume, lines after the checkpoint's step are dropped, so
    the file reads as if the run had never stopped."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self._file: Any = None

    def on_train_begin(self, state: TrainerState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, state.step)
        self._file = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        self._write({k: finite_or_none(v) if isinstance(v, float) else v for k, v in metrics.items()})

    def on_eval(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        self._write({"eval": {k: finite_or_none(v) if isinstance(v, float) else v for k, v in metrics.items()}})

    def before_save(self, state: TrainerState) -> None:
        # a checkpoint of step N must never be on disk while the lines of steps <= N are not
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def on_train_end(self, state: TrainerState) -> None:
        if self._file is not None:
            self.before_save(state)
            self._file.close()
            self._file = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The step records of a metrics.jsonl (evaluation lines and a torn last line are skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            out.append(record)
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only complete lines about steps <= ``step`` (what a resumed run has already done)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill
        at = record.get("step", record.get("eval", {}).get("step")) if isinstance(record, dict) else None
        if isinstance(at, int) and at <= step:
            kept.append(line)
    from slimtune.formats.safe import atomic_file

    with atomic_file(path, "w") as f:
        f.write("".join(line + "\n" for line in kept))


class TensorBoardWriter(Callback):
    """Scalars to RUN/tensorboard when ``torch.utils.tensorboard`` (the tensorboard package) is installed."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError when tensorboard is missing

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            value = metrics.get(key)
            if isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(f"train/{key}", value, state.step)

    def on_eval(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(f"eval/{key}", value, state.step)

    def on_train_end(self, state: TrainerState) -> None:
        self.writer.close()


def tensorboard_if_available(run_dir: Path) -> Callback | None:
    try:
        return TensorBoardWriter(run_dir)
    except ImportError:
        log.debug("tensorboard is not installed; skipping the TensorBoard writer")
        return None
