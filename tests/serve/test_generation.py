"""The batched decoding loop: left padding + attention mask + position ids give, row for row, the greedy tokens
of unbatched transformers generate, also in one batch mixing adapters and the base; sampling is seeded."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import slimtune as st
from slimtune.serve.generation import GenRow, generate_rows, left_pad, positions
from tests.conftest import randomize_adapters, tiny_llama


@pytest.fixture(scope="module")
def two_adapters() -> st.AdaptedModel:
    model = st.AdaptedModel(tiny_llama(0))
    for name in ("a", "b"):
        model.add_adapter(name, st.LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "lm_head")))
    randomize_adapters(model, std=0.3)
    return model.eval()


def reference(model: st.AdaptedModel, prompt: list[int], adapter: str | None, n: int) -> list[int]:
    model.set_active([adapter] if adapter else [])
    try:
        ids = torch.tensor([prompt])
        inner: Any = model.model
        with torch.no_grad():
            out = inner.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                       do_sample=False, pad_token_id=0)
        return list(out[0, len(prompt):].tolist())
    finally:
        model.set_active([])


def test_left_pad_and_positions() -> None:
    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_mixed_batch_greedy_equals_unbatched_generate(two_adapters: st.AdaptedModel) -> None:
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(4, 256, (int(n),), generator=gen).tolist() for n in (7, 2, 11, 4, 1, 9)]
    adapters = ["a", None, "b", "a", "b", None]
    lengths = [12, 5, 12, 8, 12, 3]  # rows end at different steps
    rows = [GenRow(p, a, n) for p, a, n in zip(prompts, adapters, lengths, strict=True)]
    results = generate_rows(two_adapters, rows, pad_id=0)
    for prompt, adapter, n, result in zip(prompts, adapters, lengths, results, strict=True):
        assert result.token_ids == reference(two_adapters, prompt, adapter, n), (adapter, len(prompt))
        assert len(result.logprobs) == n and all(lp <= 0 for lp in result.logprobs)
        assert result.finish_reason == "length"
    assert len({tuple(r.token_ids) for r in results}) == len(results)


def test_stop_tokens_end_rows_and_sampling_is_seeded(two_adapters: st.AdaptedModel) -> None:
    prompt = [10, 11, 12]
    greedy = generate_rows(two_adapters, [GenRow(prompt, "a", 6)], pad_id=0)[0].token_ids
    stopped = generate_rows(two_adapters, [GenRow(prompt, "a", 6, stop_ids=frozenset({greedy[2]}))], pad_id=0)[0]
    assert stopped.token_ids == greedy[:greedy.index(greedy[2])] and stopped.finish_reason == "stop"
    runs = [generate_rows(two_adapters, [GenRow(prompt, "b", 10, temperature=1.0, top_p=0.9, seed=s)], pad_id=0)
            for s in (1, 1, 2)]
    assert runs[0][0].token_ids == runs[1][0].token_ids != runs[2][0].token_ids
