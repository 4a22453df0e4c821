"""Run a model over a tokenized dataset in batches and keep per-example results: summed token losses and
target counts (causal LM), predicted and true classes (classification), greedy generations and their
references (question answering). Always in eval mode, under no_grad, in dataset order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimtune.errors import ConfigError

IGNORE_INDEX = -100
Collate = Callable[[list[Any]], dict[str, Tensor]]

__all__ = ["classify", "generate_answers", "lm_example_losses"]


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """eval() and no_grad for the block; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(data: Sequence[Any], collate_fn: Collate, batch_size: int,
             device: torch.device) -> Iterator[dict[str, Tensor]]:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    for start in range(0, len(data), batch_size):
        batch = collate_fn([data[i] for i in range(start, min(start + batch_size, len(data)))])
        yield {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def lm_example_losses(model: nn.Module, data: Sequence[Any], collate_fn: Collate,
                      batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per example: (summed next-token cross-entropy, number of target tokens), causal shift applied."""
    sums: list[float] = []
    counts: list[int] = []
    with inference(model):
        for batch in _batches(data, collate_fn, batch_size, _device(model)):
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()  # (B, T, V)
            shifted, targets = logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)
            loss = torch.nn.functional.cross_entropy(shifted.transpose(1, 2), targets, reduction="none",
                                                     ignore_index=IGNORE_INDEX)  # (B, T-1)
            sums += loss.sum(dim=1).double().tolist()
            counts += (targets != IGNORE_INDEX).sum(dim=1).tolist()
    return np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)


def classify(model: nn.Module, data: Sequence[Any], collate_fn: Collate,
             batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted classes, true labels, per-example cross-entropy) of a sequence classifier."""
    preds: list[int] = []
    labels: list[int] = []
    losses: list[float] = []
    with inference(model):
        for batch in _batches(data, collate_fn, batch_size, _device(model)):
            y = batch.pop("labels")
            if y.ndim != 1:
                raise ConfigError("classify needs (B,) class labels; this data has token labels (a causal LM?)")
            logits = model(**batch).logits.float()  # (B, C)
            preds += logits.argmax(dim=-1).tolist()
            labels += y.tolist()
            losses += torch.nn.functional.cross_entropy(logits, y, reduction="none").tolist()
    return np.asarray(preds), np.asarray(labels), np.asarray(losses, dtype=np.float64)


def split_prompt(example: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(prompt ids, reference ids) of a prompt/completion example: the reference is the labelled tail."""
    ids, labels = list(example["input_ids"]), list(example["labels"])
    first = next((i for i, t in enumerate(labels) if int(t) != IGNORE_INDEX), len(ids))
    return [int(t) for t in ids[:first]], [int(t) for t in labels[first:] if int(t) != IGNORE_INDEX]


def generate_answers(model: nn.Module, tokenizer: Any, data: Sequence[Any], batch_size: int = 8,
                     max_new_tokens: int = 32) -> tuple[list[str], list[str]]:
    """Greedy answers to the prompts of prompt/completion examples, and the reference answers, as text."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    predictions: list[str] = []
    references: list[str] = []
    device = _device(model)
    with inference(model):
        for start in range(0, len(data), batch_size):
            parts = [split_prompt(data[i]) for i in range(start, min(start + batch_size, len(data)))]
            width = max(len(p) for p, _ in parts)
            ids = torch.full((len(parts), width), int(pad), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, (prompt, _) in enumerate(parts):  # left padding, so every row continues at the end
                ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
                mask[row, width - len(prompt):] = 1
            generate: Any = model.generate
            out = generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=int(pad))
            predictions += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            references += [tokenizer.decode(ref, skip_special_tokens=True) for _, ref in parts]
    return [p.strip() for p in predictions], [r.strip() for r in references]
