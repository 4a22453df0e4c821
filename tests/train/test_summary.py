"""RUN/train_result.json, written by the trainer for every run with a run folder: non-padding tokens, loop
seconds and tokens/s, peak memory over the fit (a fresh window per fit), resumes and no-op reruns; the whole
model saved for full fine-tuning; runs without checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import slimtune.train.summary as summary_module
from slimtune.errors import ConfigError
from slimtune.train import TrainConfig, Trainer
from slimtune.train.summary import TRAIN_RESULT_NAME, read_summary, reset_peak_memory
from tests.train.helpers import pad_collate, tiny_llama, tiny_lora_llama, token_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(run_dir: Path, model: nn.Module | None = None, data: list[Any] | None = None, **kw: Any) -> Any:
    cfg = {"steps": 2, "batch_size": 4, "lr": 1e-2, "log_every": 100, **kw.pop("config", {})}
    return Trainer(
        model or tiny_lora_llama(),
        TrainConfig(**cfg),
        data or token_data(8, seed=5),
        pad_collate,
        run_dir=run_dir,
        **kw,
    ).fit()


def test_train_result_counts_non_padding_tokens_and_tokens_per_second(tmp_path: Path) -> None:
    data = token_data(8, seed=5, min_len=3, max_len=16)  # 2 steps x 4 = one epoch: every example once
    lengths = [int(x["attention_mask"].sum()) for x in data]
    assert len(set(lengths)) > 1  # the batches are padded, so padding would inflate a count of input_ids
    result = _fit(tmp_path, data=data)
    summary = read_summary(tmp_path)
    assert summary is not None and (tmp_path / TRAIN_RESULT_NAME).is_file()
    assert summary["steps"] == 2 and summary["tokens_seen"] == sum(lengths) == result.tokens_seen
    assert summary["tokens_trained"] == sum(lengths)
    assert 0 < summary["loop_seconds"] <= summary["wall_time"]
    assert summary["tokens_per_s"] == pytest.approx(sum(lengths) / summary["loop_seconds"])
    assert summary["tokens_per_s"] == pytest.approx(result.tokens_per_s)
    assert summary["peak_memory"] == result.peak_memory > 0 and summary["peak_memory_kind"] == "rss_peak"
    assert summary["device"] == "cpu" and summary["world_size"] == 1 and summary["stopped_reason"] == "max_steps"
    assert summary["final_loss"] == result.losses[-1] and summary["resumed_from"] is None


_TWO_FITS = """
import json, sys
from pathlib import Path
import torch
from slimtune.train import Callback, TrainConfig, Trainer
from slimtune.train.summary import read_summary, reset_peak_memory
from tests.train.helpers import pad_collate, tiny_lora_llama, token_data

class Ballast(Callback):  # holds 300 MiB of touched memory during step 1, then frees it
    def on_step_end(self, state, metrics):
        if state.step == 1:
            ballast = torch.ones(300 * 2**18)
            assert float(ballast[-1]) == 1.0

torch.set_num_threads(1)
if reset_peak_memory(torch.device("cpu")) != "fit":
    print(json.dumps({"scope": "process"}))
    sys.exit(0)
out = Path(sys.argv[1])
peaks = {}
for name, callbacks in (("big", [Ballast()]), ("small", [])):
    cfg = TrainConfig(steps=2, batch_size=4, lr=1e-2, log_every=100)
    result = Trainer(tiny_lora_llama(), cfg, token_data(8, seed=5), pad_collate, run_dir=out / name,
                     callbacks=callbacks).fit()
    peaks[name] = result.peak_memory
print(json.dumps({"scope": read_summary(out / "small")["peak_memory_scope"], **peaks}))
"""


def test_peak_memory_is_the_peak_of_each_fit(tmp_path: Path) -> None:
    # In a fresh process, as a `slimtune train` run is: a long test session's own allocations (models cached
    # by other tests) would be part of whatever the platform's high-water mark does
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _TWO_FITS, str(tmp_path)], cwd=root, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if found["scope"] != "fit":
        pytest.skip("this platform cannot reset the resident-set high-water mark")
    assert found["big"] - found["small"] > 250 * 2**20  # the second fit does not inherit the first's peak


def test_a_reset_the_kernel_ignores_falls_back_to_the_process_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    # gVisor-style kernels accept the clear_refs write and leave VmHWM where it was: the probe must see that
    # and the fit must not claim a per-fit peak.
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs on this platform")
    statuses = {"ignored": ["VmHWM:\t 3459500 kB\nVmRSS:\t 1048576 kB\n"] * 3,
                "honoured": ["VmHWM:\t 1049000 kB\nVmRSS:\t 1048576 kB\n"] * 3, "missing": [""] * 3}
    for case, expected in (("ignored", "process"), ("honoured", "fit"), ("missing", "process")):
        monkeypatch.setattr(summary_module, "_proc_status", statuses[case].pop)
        summary_module._hwm_reset_works.cache_clear()
        assert reset_peak_memory(torch.device("cpu")) == expected, case
    summary_module._hwm_reset_works.cache_clear()


def test_resume_counts_this_process_and_a_no_op_rerun_keeps_the_file(tmp_path: Path) -> None:
    data = token_data(16, seed=6)
    first = _fit(tmp_path, data=data, config={"steps": 2, "checkpoint_every": 2})
    resumed = _fit(tmp_path, data=data, config={"steps": 4, "checkpoint_every": 2})
    summary = read_summary(tmp_path)
    assert summary is not None and resumed.resumed_from == summary["resumed_from"] == 2
    assert summary["tokens_seen"] == resumed.tokens_seen and summary["steps"] == 4
    assert summary["tokens_trained"] == resumed.tokens_seen - first.tokens_seen > 0
    written = (tmp_path / TRAIN_RESULT_NAME).read_bytes()
    again = _fit(tmp_path, data=data, config={"steps": 4, "checkpoint_every": 2})
    assert again.stopped_reason == "already_complete" and again.tokens_trained == 0
    assert (tmp_path / TRAIN_RESULT_NAME).read_bytes() == written  # the numbers of the run that trained


def test_full_fine_tuning_saves_the_whole_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_llama(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _fit(tmp_path, model=model, lineage={"recipe": {"name": "full"}})
    assert result.model_dir == tmp_path / "model" and result.adapter_dir is None
    assert not (tmp_path / "adapter").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    changed = 0
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
        changed += not torch.equal(before[key], value)
    assert changed > 0  # the saved weights are the trained ones, not the initial ones
    lineage = json.loads((tmp_path / "model" / "slimtune.json").read_text())
    assert lineage["saved"] == "full_model" and lineage["recipe"] == {"name": "full"}
    assert read_summary(tmp_path) is not None


def test_a_run_without_checkpoints_writes_none(tmp_path: Path) -> None:
    result = _fit(tmp_path, checkpoints=False)
    assert result.adapter_dir == tmp_path / "adapter" and (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / TRAIN_RESULT_NAME).is_file()
    with pytest.raises(ConfigError, match="checkpoints=False"):
        _fit(tmp_path / "other", checkpoints=False, config={"checkpoint_every": 1})
