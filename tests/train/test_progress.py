"""Progress output and TrainConfig validation."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from slimtune.errors import ConfigError
from slimtune.train import TrainConfig, Trainer, TrainerState
from slimtune.train.progress import LogProgress, RichProgress, default_progress
from tests.train.helpers import pad_collate, tiny_lora_llama, token_data


def test_plain_log_lines_when_stderr_is_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(default_progress(2), LogProgress)  # pytest captures stderr: not a terminal
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-2, log_every=2)
    with caplog.at_level(logging.INFO, logger="slimtune.train.progress"):
        Trainer(tiny_lora_llama(), cfg, token_data(16), pad_collate).fit()
    lines = [r.getMessage() for r in caplog.records if r.name == "slimtune.train.progress"]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"]
    assert all("loss" in line and "tokens/s" in line for line in lines)


def test_rich_bar_shows_loss_and_throughput() -> None:
    out = io.StringIO()
    bar = RichProgress(Console(file=out, force_terminal=True, width=120))
    state = TrainerState(step=0, max_steps=3)
    bar.on_train_begin(state)
    state.step = 2
    bar.on_step_end(state, {"loss": 1.2345, "tokens_per_s": 987.0})
    bar.progress.refresh()
    bar.on_train_end(state)
    text = out.getvalue()
    assert "1.2345" in text and "987" in text and "2/3" in text


@pytest.mark.parametrize(("kwargs", "field"), [
    ({}, "steps or epochs"),
    ({"steps": 0}, "steps"),
    ({"steps": 1, "lr": 0}, "lr"),
    ({"steps": 1, "betas": (0.9, 1.5)}, "betas"),
    ({"steps": 1, "nan_guard": -1}, "nan_guard"),
    ({"steps": 1, "precision": "fp8"}, "'fp8'"),
    ({"steps": 1, "warmup_ratio": 1.0}, "warmup_ratio"),
    ({"steps": 1, "keep_last": 0}, "keep_last"),
])
def test_train_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kwargs)


def test_unknown_train_option_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'max_steps'.*known options: steps, epochs"):
        TrainConfig.from_dict({"max_steps": 3})
