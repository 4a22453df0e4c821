"""Dynamic padding, and packing with block-diagonal causal attention verified on a tiny Llama."""

from __future__ import annotations

import random

import pytest
import torch

from slimtune.data.collate import PackedCollator, PaddingCollator, block_causal_mask, segment_ids, to_additive
from slimtune.data.packing import pack_examples, packing_efficiency
from slimtune.data.tokenize import IGNORE_INDEX
from slimtune.errors import ConfigError, DataError

VOCAB = 256


def random_examples(n: int, lo: int, hi: int, seed: int, prompt: bool = True) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randint(1, VOCAB - 1) for _ in range(length)]
        cut = rng.randint(0, length - 1) if prompt else 0  # prompt positions get no loss
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:], "source": "mem:1"})
    return out


def test_padding_collator_pads_right_with_masks_and_ignored_labels() -> None:
    examples = random_examples(5, 2, 11, seed=0)
    batch = PaddingCollator(pad_token_id=0)(examples)
    longest = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (5, longest)
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == ex["input_ids"]
        assert batch["labels"][i, :n].tolist() == ex["labels"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)
        assert (batch["input_ids"][i, n:] == 0).all() and (batch["labels"][i, n:] == IGNORE_INDEX).all()
    assert "source" not in batch


def test_padding_to_multiple_of_8_and_left_padding() -> None:
    examples = random_examples(3, 9, 13, seed=1)
    batch = PaddingCollator(pad_token_id=7, pad_to_multiple_of=8, padding_side="left")(examples)
    assert batch["input_ids"].shape[1] == 16
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        assert batch["input_ids"][i, 16 - n:].tolist() == ex["input_ids"]
        assert batch["attention_mask"][i, : 16 - n].sum() == 0 and batch["attention_mask"][i].sum() == n


def test_padding_collator_classification_labels() -> None:
    examples = [{"input_ids": [5, 6, 7], "label": 2}, {"input_ids": [5], "label": 0}]
    batch = PaddingCollator(pad_token_id=0)(examples)
    assert batch["labels"].tolist() == [2, 0] and batch["labels"].dtype == torch.long
    with pytest.raises(ConfigError, match="pad_token_id"):
        PaddingCollator(pad_token_id=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty batch"):
        PaddingCollator(pad_token_id=0)([])


@pytest.mark.parametrize("strategy", ["ffd", "sequential"])
def test_packing_keeps_every_token_within_max_length(strategy: str) -> None:
    examples = random_examples(40, 3, 30, seed=2)
    packed = pack_examples(examples, 64, strategy)  # type: ignore[arg-type]
    assert all(len(p["input_ids"]) <= 64 for p in packed)
    assert sum(len(p["seq_lens"]) for p in packed) == len(examples)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(e["input_ids"]) for e in examples)
    total = sum(len(e["input_ids"]) for e in examples)
    assert packing_efficiency(packed, 64) == pytest.approx(total / (64 * len(packed)))
    for p in packed:
        starts = [i for i, pos in enumerate(p["position_ids"]) if pos == 0]
        assert len(starts) == len(p["seq_lens"])
        assert all(p["labels"][s] == IGNORE_INDEX for s in starts)  # never predicted across a boundary
    if strategy == "sequential":  # order is kept: concatenating rows gives the input order back
        flat = [t for p in packed for t in p["input_ids"]]
        assert flat == [t for e in examples for t in e["input_ids"]]


def test_packing_refuses_too_long_and_classification() -> None:
    with pytest.raises(DataError, match="70 tokens"):
        pack_examples(random_examples(1, 70, 70, seed=3), 64)
    with pytest.raises(ConfigError, match="classification"):
        pack_examples([{"input_ids": [1, 2], "label": 1}], 64)


def test_block_causal_mask_shape_and_blocks() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert segment_ids(pos).tolist() == [[1, 1, 1, 2, 2, 3]]
    mask = block_causal_mask(pos)
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bool
    expect = torch.zeros(6, 6, dtype=torch.bool)
    for a, b in ((0, 3), (3, 5), (5, 6)):
        expect[a:b, a:b] = torch.ones(b - a, b - a, dtype=torch.bool).tril()
    assert torch.equal(mask[0, 0], expect)
    add = to_additive(mask, torch.float32)
    assert (add[mask] == 0).all() and (add[~mask] == torch.finfo(torch.float32).min).all()


def tiny_llama(attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


def _packed_vs_alone(model: torch.nn.Module, collator: PackedCollator, seed: int) -> tuple[float, float]:
    """Largest |packed - alone| over all real tokens, and the loss-sum difference."""
    examples = random_examples(9, 3, 20, seed=seed)
    packed = pack_examples(examples, 48)
    assert any(len(p["seq_lens"]) > 1 for p in packed)  # the test means something only if rows hold several
    batch = collator(packed)
    with torch.no_grad():
        # use_cache=False: transformers only detects packing from position_ids when no cache is built
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits  # (B, T, V)
        worst, loss_packed, loss_alone = 0.0, 0.0, 0.0
        for row, p in enumerate(packed):
            offset = 0
            members = [e for e in examples if e["input_ids"] in _split(p)]
            for n, ex in zip(p["seq_lens"], members, strict=True):
                alone = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]  # (n, V)
                worst = max(worst, (logits[row, offset:offset + n] - alone).abs().max().item())
                loss_alone += _loss_sum(alone, torch.tensor(ex["labels"]))
                offset += n
        for row in range(len(packed)):
            loss_packed += _loss_sum(logits[row], batch["labels"][row])
    return worst, abs(loss_packed - loss_alone)


def _split(p: dict) -> list[list[int]]:
    out, offset = [], 0
    for n in p["seq_lens"]:
        out.append(p["input_ids"][offset:offset + n])
        offset += n
    return out


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX,
                                             reduction="sum").item()


@pytest.mark.parametrize(("attn", "mask", "dtype"), [
    ("eager", "4d", torch.float32),
    ("sdpa", "4d", torch.float32),
    ("sdpa", "4d", torch.bool),
    ("eager", "position_ids", torch.float32),
    ("sdpa", "position_ids", torch.float32),
])
def test_packed_sequences_never_see_each_other(attn: str, mask: str, dtype: torch.dtype) -> None:
    model = tiny_llama(attn)
    collator = PackedCollator(0, pad_to_multiple_of=8, mask=mask, mask_dtype=dtype)  # type: ignore[arg-type]
    worst, loss_gap = _packed_vs_alone(model, collator, seed=4)
    assert worst < 1e-5
    assert loss_gap < 1e-3


def test_without_the_block_mask_sequences_leak() -> None:
    """Negative control: a plain causal mask over a packed row changes later sequences' logits."""
    model = tiny_llama("sdpa")
    examples = random_examples(2, 10, 10, seed=5)
    packed = pack_examples(examples, 32, "sequential")[0]
    ids = torch.tensor([packed["input_ids"]])
    with torch.no_grad():
        leaky = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                      position_ids=torch.tensor([packed["position_ids"]])).logits[0, 10:]
        alone = model(input_ids=torch.tensor([examples[1]["input_ids"]])).logits[0]
    assert (leaky - alone).abs().max().item() > 1e-3


def test_position_ids_mode_leaks_when_a_cache_is_built() -> None:
    """Why "4d" is the default: with use_cache on (eval default), transformers skips packed detection."""
    model = tiny_llama("sdpa")
    packed = pack_examples(random_examples(2, 10, 10, seed=5), 32, "sequential")
    for mode, leaks in (("position_ids", True), ("4d", False)):
        batch = PackedCollator(0, mask=mode)([packed[0]])  # type: ignore[arg-type]
        batch.pop("labels")
        with torch.no_grad():
            cached = model(**batch, use_cache=True).logits
            uncached = model(**batch, use_cache=False).logits
        assert ((cached - uncached).abs().max().item() > 1e-3) == leaks


def test_packed_collator_pads_with_own_block_and_ignored_labels() -> None:
    packed = pack_examples(random_examples(4, 3, 9, seed=6), 16, "sequential")
    batch = PackedCollator(pad_token_id=0, pad_to_multiple_of=8)(packed)
    t = batch["input_ids"].shape[1]
    assert t % 8 == 0 and batch["attention_mask"].shape == (len(packed), 1, t, t)
    for i, p in enumerate(packed):
        n = len(p["input_ids"])
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["position_ids"][i, n:].tolist() == list(range(t - n))
        # a real token never attends to padding
        assert (batch["attention_mask"][i, 0, :n, n:] == torch.finfo(torch.float32).min).all()
    with pytest.raises(ConfigError, match="position_ids"):
        PackedCollator(pad_token_id=0)([{"input_ids": [1], "labels": [1]}])
    with pytest.raises(ConfigError, match="mask_dtype"):
        PackedCollator(pad_token_id=0, mask_dtype=torch.int64)
