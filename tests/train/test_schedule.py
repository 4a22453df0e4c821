"""Learning-rate schedules: values at known steps, and what the trainer actually used."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from slimtune.errors import ConfigError
from slimtune.train import TrainConfig, Trainer, lr_factor, read_metrics
from tests.train.helpers import pad_collate, tiny_lora_llama, token_data


@pytest.mark.parametrize(("kind", "step", "expected"), [
    ("constant", 0, 0.0), ("constant", 1, 0.5), ("constant", 2, 1.0), ("constant", 9, 1.0),
    ("linear", 0, 0.0), ("linear", 1, 0.5), ("linear", 2, 1.0), ("linear", 6, 0.5), ("linear", 10, 0.0),
    ("cosine", 1, 0.5), ("cosine", 2, 1.0), ("cosine", 4, 0.5 * (1 + math.cos(math.pi / 4))),
    ("cosine", 6, 0.5), ("cosine", 8, 0.5 * (1 + math.cos(3 * math.pi / 4))), ("cosine", 10, 0.0),
])
def test_schedule_values_with_two_warmup_steps_of_ten(kind: str, step: int, expected: float) -> None:
    assert lr_factor(step, 10, 2, kind) == pytest.approx(expected, abs=1e-12)


def test_without_warmup_the_first_step_runs_at_the_peak() -> None:
    assert lr_factor(0, 10, 0, "linear") == 1.0 and lr_factor(5, 10, 0, "linear") == 0.5


def test_unknown_schedule_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'cosinus'"):
        lr_factor(0, 10, 0, "cosinus")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(steps=1, schedule="cosinus")  # type: ignore[arg-type]


def test_trainer_logs_the_scheduled_learning_rate(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=6, batch_size=4, lr=0.01, schedule="cosine", warmup_ratio=0.34, log_every=100)
    Trainer(tiny_lora_llama(), cfg, token_data(24), pad_collate, run_dir=tmp_path).fit()
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert cfg.warmup_for(6) == 2
    assert lrs == pytest.approx([0.01 * lr_factor(s, 6, 2, "cosine") for s in range(6)])
    assert lrs[2] == pytest.approx(0.01) and lrs[1] == pytest.approx(0.005)
