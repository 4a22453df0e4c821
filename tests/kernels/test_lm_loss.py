"""kernels.lm_loss, the trainer's default causal-LM loss: the head on target positions only gives the model's
own loss and gradients, and steps aside (None) wherever the model or batch is not a plain causal-LM one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import slimtune as st
from slimtune import kernels
from slimtune.train import TrainConfig, Trainer
from tests.conftest import randomize_adapters, tiny_bert, tiny_gpt2, tiny_llama
from tests.train.helpers import pad_collate, token_data

FP32 = {"atol": 1e-5, "rtol": 1e-4}


def _batch(seed: int = 7, batch: int = 4, seq: int = 13) -> dict[str, torch.Tensor]:
    """Right-padded rows of random lengths whose labels hide a random prompt, as chat data does."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 256, (batch, seq), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    prompt = torch.randint(1, seq // 2, (batch,), generator=g)
    labels = labels.masked_fill(torch.arange(seq)[None, :] < prompt[:, None], -100)
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.requires_grad and p.grad is not None]


LORA = st.LoraConfig(r=4, alpha=8, targets="all-linear")
PROMPT = st.PromptTuningConfig(num_virtual_tokens=3)
PREFIX = st.PrefixTuningConfig(num_virtual_tokens=3)


@pytest.mark.parametrize(("build", "config"), [
    ("llama", LORA), ("llama_tied", LORA), ("gpt2", LORA),
    ("llama", PROMPT), ("llama_tied", PREFIX), ("llama", PREFIX),  # inputs put in as the forward puts them
])
@pytest.mark.parametrize("fast", [False, True])
def test_loss_and_gradients_equal_the_models_own(build: str, config: st.AdapterConfig, fast: bool) -> None:
    base = {"llama": tiny_llama, "llama_tied": lambda: tiny_llama(tie=True), "gpt2": tiny_gpt2}[build]()
    model = st.adapt(base, config)
    randomize_adapters(model)
    model.train()
    batch = _batch()
    assert 0 < int((batch["labels"] != -100).sum()) < batch["labels"].numel() // 2 + batch["labels"].shape[0]
    torch.manual_seed(0)  # GPT-2 trains with dropout: the same masks on both sides
    want = model(**batch).loss
    want.backward()
    want_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    got = kernels.lm_loss(model, batch, fast=fast)
    assert got is not None
    got.backward()
    torch.testing.assert_close(got.detach(), want.detach(), **FP32)
    got_grads = _grads(model)
    assert len(got_grads) == len(want_grads) == len(list(model.trainable_parameters()))
    for g, w in zip(got_grads, want_grads, strict=True):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, **FP32)


def test_a_batch_without_targets_is_nan_as_the_model_says() -> None:
    model = tiny_llama()
    batch = _batch()
    batch["labels"] = torch.full_like(batch["labels"], -100)
    got = kernels.lm_loss(model, batch)
    assert got is not None and torch.isnan(got) and torch.isnan(model(**batch).loss)


def test_steps_aside_where_it_does_not_apply() -> None:
    batch = _batch()
    bert = tiny_bert()
    assert kernels.lm_loss(bert, {"input_ids": batch["input_ids"], "labels": torch.tensor([0, 1, 2, 0])}) is None
    llama = tiny_llama()
    assert kernels.lm_loss(llama, {k: v for k, v in batch.items() if k != "labels"}) is None
    llama.config.final_logit_softcapping = 30.0  # the forward does more to the logits than the head
    assert kernels.lm_loss(llama, batch) is None
    head_adapted = st.adapt(tiny_llama(), st.LoraConfig(r=2, targets=("lm_head",)))
    assert kernels.lm_loss(head_adapted, batch) is None
    mixed = st.adapt(tiny_llama(), st.LoraConfig(r=2))
    assert kernels.lm_loss(mixed, {**batch, "adapter_names": ["default"] * 4}) is None


def test_the_trainer_trains_as_it_did_with_the_models_loss(tmp_path: Any) -> None:
    data = token_data(16, seed=3, min_len=4, max_len=14)
    for i, row in enumerate(data):  # a prompt with no loss on each row
        row["labels"] = row["labels"].clone()
        row["labels"][: 1 + i % 3] = -100
    results, params = [], []
    for loss_fn in (None, lambda m, b: m(**b).loss):
        model = st.adapt(tiny_llama(seed=2), st.LoraConfig(r=4, alpha=8, targets="all-linear", init="gaussian"))
        cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, log_every=100, seed=1)
        results.append(Trainer(model, cfg, data, pad_collate, loss_fn=loss_fn).fit())
        params.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert results[0].losses == pytest.approx(results[1].losses, rel=1e-5)
    assert results[0].losses[0] != results[0].losses[-1]
    for name, value in params[0].items():
        torch.testing.assert_close(value, params[1][name], **FP32)
