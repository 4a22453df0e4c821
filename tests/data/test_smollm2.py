"""The real SmolLM2 tokenizer (ChatML, no generation tags): assistant spans by the prefix method."""

from __future__ import annotations

import random
from typing import Any

import pytest

from slimtune.data import DataSpec, build_dataset, collator_for, corpora
from slimtune.data.tokenize import IGNORE_INDEX, TokenizeOptions, tokenize_chat

pytestmark = pytest.mark.slow


def _runs(labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            if i == 0 or labels[i - 1] == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(lab)
    return runs


def test_assistant_tokens_are_content_plus_end_of_turn(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    assert "{% generation %}" not in tok.chat_template  # no generation tags: the prefix method is needed
    rows, _ = corpora.chatterbot_qa()
    rng = random.Random(0)
    sample = rng.sample(rows, 150)
    opts = TokenizeOptions(max_length=4096)
    for r in sample:  # single turn, default system prompt injected by the template
        msgs = [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        ex = tokenize_chat(tok, msgs, opts)
        assert [tok.decode(run) for run in _runs(ex["labels"])] == [r["answer"] + "<|im_end|>"]
    # multi-turn with an explicit system prompt
    msgs = [{"role": "system", "content": "Be brief."}]
    for r in sample[:6]:
        msgs += [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
    ex = tokenize_chat(tok, msgs, opts)
    assert ex["input_ids"] == list(tok.apply_chat_template(msgs)["input_ids"])
    expect = [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]
    assert [tok.decode(run) for run in _runs(ex["labels"])] == expect
    pairs = zip(ex["input_ids"], ex["labels"], strict=True)
    user_text = tok.decode([t for t, lab in pairs if lab == IGNORE_INDEX])
    assert all(m["content"] in user_text for m in msgs if m["role"] != "assistant")


def test_builtin_chatterbot_packed_with_the_real_tokenizer(smollm2_tokenizer: Any) -> None:
    examples, report = build_dataset(DataSpec("builtin:chatterbot", max_rows=200), smollm2_tokenizer,
                                     max_length=256, packing=True)
    assert report.rows_used == 200 and report.packed and report.packing_efficiency > 0.9  # type: ignore[operator]
    assert report.provenance is not None and report.provenance["licence"] == "BSD-3-Clause"
    batch = collator_for(report, smollm2_tokenizer)(examples[:2])
    assert batch["attention_mask"].shape == (2, 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    im_end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    n_turns = sum(len(p["seq_lens"]) for p in examples)
    assert n_turns == 200 and sum(p["labels"].count(im_end) for p in examples) == 200


def test_hamlet_lm_gets_eos(smollm2_tokenizer: Any) -> None:
    examples, report = build_dataset(DataSpec("builtin:hamlet", lm_overflow="chunk"), smollm2_tokenizer, 128)
    assert report.truncated == 0 and all(len(e["input_ids"]) <= 128 for e in examples)
    assert report.provenance is not None and report.provenance["licence"] == "public-domain"
    eos = smollm2_tokenizer.eos_token_id
    assert sum(e["input_ids"].count(eos) for e in examples) == report.rows_used
