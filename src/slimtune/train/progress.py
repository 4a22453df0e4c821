"""Progress reporting: a rich progress bar (loss, tokens/s, ETA) when stderr is a terminal, plain log lines
every ``log_every`` steps otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

from slimtune.train.callbacks import Callback, TrainerState

log = logging.getLogger(__name__)


class LogProgress(Callback):
    """One INFO line every ``every`` steps and after each evaluation."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        if state.step % self.every and state.step != state.max_steps:
            return
        loss = metrics.get("loss")
        log.info("step %d/%d loss %s lr %.3g grad_norm %s tokens/s %.0f", state.step, state.max_steps,
                 "skipped" if loss is None else f"{loss:.4f}", metrics.get("lr", 0.0),
                 _fmt(metrics.get("grad_norm")), metrics.get("tokens_per_s", 0.0))

    def on_eval(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step" and isinstance(v, float))
        log.info("eval at step %d: %s", state.step, parts)


class RichProgress(Callback):
    """A live rich progress bar on stderr."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                                 TimeRemainingColumn(), console=console or Console(stderr=True), transient=False)
        self.task: Any = None

    def on_train_begin(self, state: TrainerState) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.step, loss="-", tps="-")

    def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        loss = metrics.get("loss")
        self.progress.update(self.task, completed=state.step, loss="skipped" if loss is None else f"{loss:.4f}",
                             tps=f"{metrics.get('tokens_per_s', 0.0):.0f}")

    def on_eval(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step" and isinstance(v, float))
        self.progress.console.log(f"eval at step {state.step}: {parts}")

    def on_train_end(self, state: TrainerState) -> None:
        self.progress.stop()


def default_progress(every: int) -> Callback:
    return RichProgress() if sys.stderr.isatty() else LogProgress(every)


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else "n/a"
