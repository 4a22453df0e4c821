"""The trainer in one process: accumulation, evaluation, early stopping, NaN guard, gradient checkpointing,
LoRA+ groups, metrics.jsonl and the final adapter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import slimtune as st
from slimtune.errors import ConfigError, TrainingError
from slimtune.formats.safe import read_tensors
from slimtune.train import Callback, CheckpointStore, TrainConfig, Trainer, TrainerState, read_metrics
from slimtune.train.order import BatchOrder
from slimtune.train.trainer import enable_gradient_checkpointing
from tests.train.helpers import pad_collate, tiny_llama, tiny_lora_llama, token_data, trainable_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(model: nn.Module | None = None, n: int = 24, run_dir: Path | None = None, **kw: Any) -> Trainer:
    cfg = {"steps": 4, "batch_size": 4, "lr": 1e-2, "log_every": 100, **kw.pop("config", {})}
    return Trainer(model or tiny_lora_llama(), TrainConfig(**cfg), token_data(n), pad_collate, run_dir=run_dir,
                   **kw)


def test_grad_accumulation_equals_one_larger_batch() -> None:
    big = _trainer(config={"batch_size": 4, "grad_accum": 1}).fit()
    small = _trainer(config={"batch_size": 2, "grad_accum": 2}).fit()
    assert len(set(big.losses)) == 4
    for a, b in zip(big.losses, small.losses, strict=True):
        assert a is not None and b is not None and abs(a - b) < 1e-5


def test_training_lowers_the_loss_on_repeated_data() -> None:
    data = token_data(8, seed=2) * 4
    trainer = Trainer(tiny_lora_llama(), TrainConfig(steps=30, batch_size=8, lr=2e-2, schedule="constant",
                                                     log_every=100), data, pad_collate)
    result = trainer.fit()
    first, last = result.losses[0], result.losses[-1]
    assert first is not None and last is not None and last < first - 0.3


def test_only_trainable_parameters_change_and_the_optimizer_holds_only_them() -> None:
    model = tiny_lora_llama()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = trainable_snapshot(model)
    trainer = _trainer(model)
    trainer.fit()
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.trainable_parameters()}
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)


def test_evaluate_is_token_weighted() -> None:
    model = tiny_lora_llama()
    data = token_data(7, seed=5)
    trainer = _trainer(model)
    metrics = trainer.evaluate(data)
    model.eval()
    with torch.no_grad():  # one example at a time: the weights are each example's target count
        per = [(float(model(**pad_collate([d])).loss), len(d["input_ids"]) - 1) for d in data]
    expected = sum(loss * n for loss, n in per) / sum(n for _, n in per)
    assert metrics["loss"] == pytest.approx(expected, abs=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def _ascend_in_training(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Gradient ascent while training, the plain loss when evaluating: eval loss rises step after step."""
    loss = model(**batch).loss
    return -loss if model.training else loss


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path: Path) -> None:
    trainer = Trainer(tiny_lora_llama(), TrainConfig(steps=20, batch_size=4, lr=1e-2, eval_every=2,
                                                     early_stopping_patience=2, log_every=100),
                      token_data(24), pad_collate, eval_data={"val": token_data(6, seed=8)}, run_dir=tmp_path,
                      loss_fn=_ascend_in_training)
    result = trainer.fit()
    assert result.stopped_reason == "early_stopping"
    assert result.steps == 6  # evals at 2 (best), 4 and 6 (worse twice)
    losses = [e["val/loss"] for e in result.eval_history]
    assert losses[0] < losses[1] < losses[2]
    again = Trainer(tiny_lora_llama(), trainer.config, token_data(24), pad_collate, run_dir=tmp_path,
                    eval_data={"val": token_data(6, seed=8)}, loss_fn=_ascend_in_training).fit()
    assert again.stopped_reason == "early_stopping" and again.steps == 6  # a resume does not train on


class _NanAt:
    """A loss_fn that returns NaN on the given (1-based) training forward calls."""

    def __init__(self, bad: set[int]) -> None:
        self.bad, self.calls = bad, 0

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        loss = model(**batch).loss
        if not model.training:
            return loss
        self.calls += 1
        return loss * float("nan") if self.calls in self.bad else loss


class _Weights(Callback):
    def __init__(self, model: st.AdaptedModel) -> None:
        self.model = model
        self.after: list[dict[str, Tensor]] = []

    def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        self.after.append(trainable_snapshot(self.model))


def test_nan_guard_skips_the_step_and_leaves_weights_untouched(tmp_path: Path) -> None:
    model = tiny_lora_llama()
    spy = _Weights(model)
    result = _trainer(model, run_dir=tmp_path, loss_fn=_NanAt({3}), callbacks=[spy], config={"steps": 5}).fit()
    assert result.losses[2] is None and all(x is not None for i, x in enumerate(result.losses) if i != 2)
    for key in spy.after[1]:
        assert torch.equal(spy.after[1][key], spy.after[2][key])  # step 3 changed nothing
        assert not torch.equal(spy.after[2][key], spy.after[3][key])  # step 4 trained again
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in lines] == [False, False, True, False, False] and lines[2]["loss"] is None
    assert all(torch.isfinite(p).all() for p in model.trainable_parameters())


def test_repeated_nans_stop_with_training_error_and_nothing_non_finite_is_saved(tmp_path: Path) -> None:
    trainer = _trainer(run_dir=tmp_path, loss_fn=_NanAt(set(range(3, 100))),
                       config={"steps": 10, "nan_guard": 2, "checkpoint_every": 1, "keep_last": 10})
    with pytest.raises(TrainingError, match="3 consecutive steps"):
        trainer.fit()
    saved = CheckpointStore(tmp_path / "checkpoints").complete()
    assert [p.name for p in saved] == ["step-000001", "step-000002", "step-000003", "step-000004"]
    for ckpt in saved:
        for name in ("trainable.safetensors", "optimizer.safetensors"):
            assert all(torch.isfinite(t).all() for t in read_tensors(ckpt / name).values())
    assert not (tmp_path / "adapter").exists()


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    model = tiny_lora_llama()
    trainer = _trainer(model, run_dir=tmp_path)
    with torch.no_grad():
        model.trainable_parameters()[0][0, 0] = float("inf")
    with pytest.raises(TrainingError, match="NaN/Inf"):
        trainer.save_checkpoint()
    assert CheckpointStore(tmp_path / "checkpoints").complete() == []


def _grads(model: st.AdaptedModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    model.train()
    torch.manual_seed(5)  # the same dropout masks in both models
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients_with_a_frozen_base() -> None:
    batch = pad_collate(token_data(4, seed=6))
    plain, ckpt = tiny_lora_llama(dropout=0.1), tiny_lora_llama(dropout=0.1)
    enable_gradient_checkpointing(ckpt)
    layer = ckpt.model.model.layers[0].self_attn.q_proj
    calls: list[int] = []
    layer.register_forward_hook(lambda *_: calls.append(1))
    g_plain, g_ckpt = _grads(plain, batch), _grads(ckpt, batch)
    assert len(calls) == 2  # the block really was recomputed in the backward pass
    assert g_plain.keys() == g_ckpt.keys() == {n for n, p in ckpt.named_parameters() if p.requires_grad}
    for name in g_plain:
        assert g_plain[name].abs().sum() > 0, name
        torch.testing.assert_close(g_ckpt[name], g_plain[name], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_through_the_trainer_matches_plain_training() -> None:
    a = _trainer(tiny_lora_llama()).fit()
    b = _trainer(tiny_lora_llama(), config={"gradient_checkpointing": True}).fit()
    for x, y in zip(a.losses, b.losses, strict=True):
        assert x is not None and y is not None and abs(x - y) < 1e-5


def test_loraplus_gives_b_matrices_a_higher_learning_rate() -> None:
    model = tiny_lora_llama()
    trainer = _trainer(model, config={"loraplus_lr_ratio": 16.0, "schedule": "constant"})
    slow, fast = trainer.optimizer.param_groups
    assert slow["lr"] == pytest.approx(1e-2) and fast["lr"] == pytest.approx(16e-2)
    b_ids = {id(layer.lora_B["default"].weight) for _, layer in model.adapter_layers()}
    assert {id(p) for p in fast["params"]} == b_ids
    assert len(slow["params"]) == len(b_ids)  # the A matrices


def test_loraplus_without_lora_layers_is_a_config_error() -> None:
    base = tiny_llama()
    for p in base.parameters():
        p.requires_grad_(False)
    base.lm_head.weight.requires_grad_(True)
    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        _trainer(base, config={"loraplus_lr_ratio": 4.0})


def test_compile_switch_is_validated_and_auto_is_off_on_cpu() -> None:
    with pytest.raises(ConfigError, match="compile must be true, false or null"):
        TrainConfig(steps=1, compile="yes")  # type: ignore[arg-type]
    assert _trainer(tiny_lora_llama()).compiled_blocks == 0  # auto: a CPU run stays eager
    from slimtune.train.trainer import compile_model

    assert compile_model(torch.nn.Linear(2, 2), True, torch.device("cpu"), 1) == 0  # no blocks to compile


def test_metrics_jsonl_and_final_adapter(tmp_path: Path) -> None:
    model = tiny_lora_llama()
    result = _trainer(model, run_dir=tmp_path, lineage={"recipe": {"name": "unit"}}).fit()
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert [r["loss"] for r in lines] == result.losses
    for r in lines:
        assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "time"} <= r.keys()
        assert r["tokens"] > 0 and r["grad_norm"] > 0
    assert lines[-1]["tokens"] == result.tokens_seen
    loaded = st.load_adapter(tiny_llama(), tmp_path / "adapter")
    for key, value in model.adapter_state_dict("default").items():
        assert torch.equal(loaded.adapter_state_dict("default")[key], value)
    import json

    lineage = json.loads((tmp_path / "adapter" / "slimtune.json").read_text())
    assert lineage["recipe"] == {"name": "unit"} and lineage["seed"] == 0
    assert lineage["metrics"]["train_loss"] == result.losses[-1]


def test_too_little_data_for_one_step_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs 8"):
        _trainer(n=5, config={"batch_size": 4, "grad_accum": 2})


def test_epochs_set_the_number_of_steps() -> None:
    result = _trainer(n=20, config={"steps": None, "epochs": 2, "batch_size": 4}).fit()
    assert result.steps == 10


def _int_examples(n: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(12)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 256, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def test_trains_with_the_data_layers_padding_and_packing_collators() -> None:
    from slimtune.data import PackedCollator, PaddingCollator, pack_examples

    examples = _int_examples(24)
    padded = Trainer(tiny_lora_llama(), TrainConfig(steps=3, batch_size=4, lr=1e-2), examples,
                     PaddingCollator(0)).fit()
    order = BatchOrder(24, 4, seed=0)
    seen = [i for _ in range(3) for i in order.next_global()]
    assert len(set(seen)) == 12  # one epoch's permutation: no example twice
    assert padded.tokens_seen == sum(len(examples[i]["input_ids"]) for i in seen)
    packed_data = pack_examples(examples, 32, "ffd")
    packed = Trainer(tiny_lora_llama(), TrainConfig(steps=2, batch_size=2, lr=1e-2), packed_data,
                     PackedCollator(0)).fit()  # 4-D block-diagonal attention masks
    assert all(x is not None and math.isfinite(x) for x in padded.losses + packed.losses)
