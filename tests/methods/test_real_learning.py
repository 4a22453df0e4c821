"""Each method learns on real weights: all-MiniLM-L6-v2 on Rotten Tomatoes snippets gets well above chance,
and SmolLM2-135M's loss on held-out question/answer pairs falls."""

from __future__ import annotations

import copy

import pytest
import torch

import slimtune as st
from slimtune.data import DataSpec, build_dataset, collator_for
from slimtune.embedded import load_minilm
from slimtune.train import TrainConfig, Trainer

pytestmark = pytest.mark.slow

HEAD = ("pooler", "classifier")  # all-MiniLM-L6-v2 ships no pooler weights: both start random
CLASSIFIER_METHODS = {
    "lora": [st.LoraConfig(r=8, targets=("query", "value"), modules_to_save=HEAD)],
    "dora": [st.LoraConfig(r=8, targets=("query", "value"), use_dora=True, modules_to_save=HEAD)],
    "ia3": [st.IA3Config(modules_to_save=HEAD)],
    "bottleneck": [st.BottleneckConfig(reduction_factor=8), st.SelectiveConfig(targets=HEAD)],
    "bitfit": [st.BitFitConfig(exclude=HEAD), st.SelectiveConfig(targets=HEAD)],
    "selective": [st.SelectiveConfig(targets=HEAD, last_k=1)],
}


@pytest.fixture(scope="module")
def sentiment() -> dict:
    _, tokenizer = load_minilm()
    train, report = build_dataset(DataSpec("builtin:rotten_tomatoes", split="train", max_rows=1200), tokenizer, 48)
    test, _ = build_dataset(DataSpec("builtin:rotten_tomatoes", split="test", max_rows=300,
                                     label_map=report.label_map), tokenizer, 48)
    return {"train": train, "test": test, "collate": collator_for(report, tokenizer)}


def _accuracy(model: torch.nn.Module, data: list, collate) -> float:
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(data), 64):
            batch = collate(data[i : i + 64])
            labels = batch.pop("labels")
            right += int((model(**batch).logits.argmax(-1) == labels).sum())
    return right / len(data)


@pytest.mark.parametrize("method", sorted(CLASSIFIER_METHODS))
def test_method_learns_sentiment_on_minilm(method: str, sentiment: dict) -> None:
    base, _ = load_minilm(num_labels=2)
    model = st.adapt(base, CLASSIFIER_METHODS[method])
    before = _accuracy(model, sentiment["test"], sentiment["collate"])
    lr = 1e-2 if method in ("ia3", "bitfit", "bottleneck") else 1e-3  # scale-type methods need larger steps
    config = TrainConfig(steps=75, batch_size=16, lr=lr, schedule="linear", warmup_ratio=0.1, seed=0, log_every=25)
    Trainer(model, config, sentiment["train"], sentiment["collate"]).fit()
    after = _accuracy(model, sentiment["test"], sentiment["collate"])
    assert after > 0.62, (method, before, after)  # chance is ~0.5 on this balanced split
    assert after > before + 0.05


LM_METHODS = {
    "lora": st.LoraConfig(r=8, targets="all-linear"),
    "dora": st.LoraConfig(r=8, targets=("q_proj", "v_proj"), use_dora=True),
    "ia3": st.IA3Config(),
    "bottleneck": st.BottleneckConfig(reduction_factor=16),
    "prompt": None,  # filled below when prompt tuning is present
}


def test_methods_lower_heldout_loss_on_smollm2(smollm2) -> None:
    base, tokenizer = smollm2
    train, report = build_dataset(DataSpec("builtin:chatterbot", split="train", max_rows=256), tokenizer, 64)
    held, _ = build_dataset(DataSpec("builtin:chatterbot", split="test", max_rows=32), tokenizer, 64)
    collate = collator_for(report, tokenizer)
    configs = {k: v for k, v in LM_METHODS.items() if v is not None}
    for name, config in configs.items():
        model = st.adapt(copy.deepcopy(base), config)
        trainer = Trainer(model, TrainConfig(steps=12, batch_size=8, lr=2e-3 if name != "ia3" else 1e-2, seed=0,
                                             schedule="constant", log_every=6), train, collate)
        before = trainer.evaluate(held)["loss"]
        trainer.fit()
        after = trainer.evaluate(held)["loss"]
        assert after < before - 0.05, (name, before, after)
