"""The real SmolLM2-135M-Instruct: LoRA on all linear layers learns, and save / reload / merge agree."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import slimtune as st
from tests.conftest import assert_close_scaled

pytestmark = pytest.mark.slow

PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many legs does a spider have?", "A spider has eight legs."),
]


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                           tokenize=False) for q, a in PAIRS]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def test_lora_learns_and_round_trips_on_smollm2(smollm2, tmp_path: Path) -> None:
    base, tokenizer = smollm2
    pristine = copy.deepcopy(base)
    model = st.adapt(copy.deepcopy(base), st.LoraConfig(r=8, alpha=16, targets="all-linear"))
    report = model.parameter_report()
    assert 0 < report.share < 0.02
    batch = _batch(tokenizer)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_adapter(tmp_path)
    loaded = st.load_adapter(pristine, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=0, rtol=0)
        loaded.merge()
        assert_close_scaled(loaded(**batch).logits, expected)
