"""The CUDA paths (bf16 / fp16 autocast, the fp16 grad scaler in checkpoints, resume on a GPU, TensorBoard):
skipped on machines without a GPU, run on one by hand (CI has none)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimtune.train import CheckpointStore, TrainConfig, Trainer
from tests.train.helpers import pad_collate, tiny_lora_llama, token_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fit(run_dir: Path, precision: str, steps: int = 8, **kw: object) -> Trainer:
    cfg = TrainConfig(steps=steps, batch_size=4, lr=2e-2, precision=precision, checkpoint_every=4,  # type: ignore[arg-type]
                      schedule="constant", log_every=100, **kw)  # type: ignore[arg-type]
    trainer = Trainer(tiny_lora_llama(), cfg, token_data(4, seed=2) * 8, pad_collate, run_dir=run_dir)
    trainer.result = trainer.fit()  # type: ignore[attr-defined]
    return trainer


@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_autocast_trains_on_cuda_and_keeps_fp32_adapters(tmp_path: Path, precision: str) -> None:
    trainer = _fit(tmp_path, precision, steps=20)
    losses = trainer.result.losses  # type: ignore[attr-defined]
    assert all(x is not None for x in losses[-5:]) and sum(losses[-5:]) / 5 < losses[0] - 0.2  # 4 rows learnt
    assert trainer.precision.dtype == (torch.float16 if precision == "fp16" else torch.bfloat16)
    for p in trainer.module.trainable_parameters():  # type: ignore[operator]
        assert p.device.type == "cuda" and p.dtype == torch.float32
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    if precision == "fp16":
        data = CheckpointStore(tmp_path / "checkpoints").load(tmp_path / "checkpoints" / "step-000020")
        assert data.state["scaler"]["scale"] > 0


def test_resume_on_cuda_continues_the_run(tmp_path: Path) -> None:
    full = _fit(tmp_path / "full", "bf16").result  # type: ignore[attr-defined]
    _fit(tmp_path / "split", "bf16", steps=8)
    store = CheckpointStore(tmp_path / "split" / "checkpoints")
    for path in store.complete()[1:]:  # keep step 4 only
        import shutil

        shutil.rmtree(path)
    again = _fit(tmp_path / "split", "bf16").result  # type: ignore[attr-defined]
    assert again.resumed_from == 4
    for a, b in zip(full.losses, again.losses, strict=True):
        assert abs(a - b) < 1e-3


def test_gradient_checkpointing_on_cuda(tmp_path: Path) -> None:
    a = _fit(tmp_path / "a", "bf16").result  # type: ignore[attr-defined]
    b = _fit(tmp_path / "b", "bf16", gradient_checkpointing=True).result  # type: ignore[attr-defined]
    for x, y in zip(a.losses, b.losses, strict=True):
        assert abs(x - y) < 1e-2


def test_tensorboard_events_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    _fit(tmp_path, "bf16", steps=2)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_compile_auto_on_cuda_trains_like_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slimtune import kernels

    calls: list[torch.dtype] = []
    real = kernels.lora_linear

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(x.dtype)
        return real(x, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kernels, "lora_linear", spy)
    torch._dynamo.reset()  # earlier tests' graph variants must not use up the recompile limit: compile afresh
    eager = _fit(tmp_path / "eager", "bf16", steps=20, compile=False)
    assert eager.compiled_blocks == 0 and calls and set(calls) == {torch.bfloat16}  # the fast path, in bf16
    compiled = _fit(tmp_path / "compiled", "bf16", steps=20)
    assert compiled.compiled_blocks == 2  # tiny_lora_llama's two decoder layers
    a, b = eager.result.losses, compiled.result.losses  # type: ignore[attr-defined]
    assert abs(a[0] - b[0]) < 1e-2  # same weights, same batch: the same loss up to bf16 rounding
    for losses in (a, b):  # both learn the four rows (bf16 differences compound over steps at this lr)
        assert sum(losses[-5:]) / 5 < losses[0] - 0.2
