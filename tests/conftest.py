"""Shared fixtures: tiny random transformers models built from configs, and the real embedded models."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# one tolerance table per dtype, used by every numerical comparison
TOL = {torch.float32: {"atol": 2e-5, "rtol": 1e-4}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}
# for deep real models, where rounding grows with depth: max |a - b| relative to max |b|
SCALED_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().clamp_min(1.0)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= SCALED_TOL[expected.dtype], f"max error {err:.3g} of the output scale {scale.item():.3g}"


def tiny_llama(seed: int = 0, tie: bool = False) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, tie_word_embeddings=tie, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def tiny_bert(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=256, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


BUILDERS: dict[str, Callable[[], nn.Module]] = {"llama": tiny_llama, "bert": tiny_bert, "gpt2": tiny_gpt2}


def model_inputs(kind: str, batch: int = 4, seq: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 256, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": mask}


def output_of(model: nn.Module, inputs: dict[str, torch.Tensor], **kw: object) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **kw).logits


def randomize_adapters(model: nn.Module, seed: int = 3, std: float = 0.05) -> None:
    """Move every trainable adapter tensor by random non-zero noise (zero-initialised ones become non-zero,
    IA3's ones and DoRA's magnitudes move off their start), so adapters change outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():  # type: ignore[operator]
            p.add_(torch.randn(p.shape, generator=g) * std + std / 2)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (training runs whose timing or memory another thread would blur)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clone() -> Callable[[nn.Module], nn.Module]:
    return copy.deepcopy


@pytest.fixture(scope="session")
def smollm2() -> tuple[nn.Module, object]:
    from slimtune.embedded import load_smollm2

    return load_smollm2()
