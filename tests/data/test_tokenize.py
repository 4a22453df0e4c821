"""Rows to token ids and labels: what gets a loss, where truncation cuts, classification specials."""

from __future__ import annotations

from typing import Any

import pytest

from slimtune.data.records import Row, Source
from slimtune.data.tokenize import (
    IGNORE_INDEX,
    TokenizeOptions,
    assistant_spans,
    tokenize_chat,
    tokenize_classification,
    tokenize_prompt_completion,
    tokenize_rows,
    tokenize_text,
)
from slimtune.errors import ConfigError, DataError


def trained(ex: dict[str, Any]) -> list[int]:
    return [t for t in ex["labels"] if t != IGNORE_INDEX]


def test_lm_labels_equal_ids_with_eos(toy_tokenizer: Any) -> None:
    (ex,) = tokenize_text(toy_tokenizer, "the cat sat on the mat", TokenizeOptions(max_length=64))
    assert ex["labels"] == ex["input_ids"]
    assert ex["input_ids"][-1] == toy_tokenizer.eos_token_id
    assert toy_tokenizer.decode(ex["input_ids"][:-1]) == "the cat sat on the mat"
    (no_eos,) = tokenize_text(toy_tokenizer, "the cat", TokenizeOptions(max_length=64, add_eos=False))
    assert no_eos["input_ids"][-1] != toy_tokenizer.eos_token_id


def test_lm_chunking_covers_every_token(toy_tokenizer: Any) -> None:
    text = " ".join(["one two three four five six seven"] * 3)  # 21 words + eos = 22 tokens
    chunks = tokenize_text(toy_tokenizer, text, TokenizeOptions(max_length=8, lm_overflow="chunk"))
    assert [len(c["input_ids"]) for c in chunks] == [8, 8, 6]
    joined = [t for c in chunks for t in c["input_ids"]]
    assert joined == [*toy_tokenizer(text)["input_ids"], toy_tokenizer.eos_token_id]


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_side_is_explicit(toy_tokenizer: Any, side: str) -> None:
    row = Row({"text": "one two three four five six seven eight"}, Source("m", 1))
    opts = TokenizeOptions(max_length=4, truncation_side=side)  # type: ignore[arg-type]
    (ex,), stats = tokenize_rows([row], "text", toy_tokenizer, opts)
    expect = "one two three four" if side == "right" else "six seven eight"  # + EOS
    assert toy_tokenizer.decode(ex["input_ids"], skip_special_tokens=True) == expect
    assert len(ex["input_ids"]) == 4 and stats.truncated == 1


def test_prompt_completion_loss_only_on_completion(toy_tokenizer: Any) -> None:
    opts = TokenizeOptions(max_length=64)
    ex = tokenize_prompt_completion(toy_tokenizer, "what is two plus four", "six", opts)
    n_prompt = len(toy_tokenizer("what is two plus four")["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert toy_tokenizer.decode(trained(ex)) == "six <|im_end|>"
    assert ex["input_ids"][n_prompt:] == trained(ex)


def test_truncation_that_leaves_no_completion_skips_the_row(toy_tokenizer: Any) -> None:
    rows = [Row({"prompt": "one two three four five six", "completion": "yes"}, Source("f.jsonl", 9)),
            Row({"prompt": "one", "completion": "yes"}, Source("f.jsonl", 10))]
    examples, stats = tokenize_rows(rows, "prompt_completion", toy_tokenizer, TokenizeOptions(max_length=4))
    assert [ex["source"] for ex in examples] == ["f.jsonl:10"]
    assert [(b.line, "max_length=4" in b.reason) for b in stats.skipped] == [(9, True)]
    assert stats.loss_tokens == 2  # "yes" and EOS


def test_chat_loss_only_on_assistant_turns(toy_tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "you are helpful"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello how are you"},
        {"role": "user", "content": "what is two plus four"},
        {"role": "assistant", "content": "six"},
    ]
    ex = tokenize_chat(toy_tokenizer, messages, TokenizeOptions(max_length=128))
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids == toy_tokenizer.apply_chat_template(messages)["input_ids"]
    runs: list[list[int]] = []
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            if not runs or labels[i - 1] == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(lab)
    assert [toy_tokenizer.decode(r) for r in runs] == ["hello how are you <|im_end|>", "six <|im_end|>"]
    newline = toy_tokenizer.convert_tokens_to_ids("\n")
    assert all(labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t == newline)


def test_assistant_first_and_no_template(toy_tokenizer: Any) -> None:
    ids, spans = assistant_spans(toy_tokenizer, [{"role": "assistant", "content": "hi"}], 3)
    assert len(spans) == 1 and toy_tokenizer.decode(ids[slice(*spans[0])]) == "hi <|im_end|>"
    import copy

    bare = copy.deepcopy(toy_tokenizer)
    bare.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        tokenize_chat(bare, [{"role": "assistant", "content": "hi"}], TokenizeOptions(max_length=8))


def test_template_that_rewrites_history_is_refused(toy_tokenizer: Any) -> None:
    import copy

    odd = copy.deepcopy(toy_tokenizer)  # renders only the last message: prefixes are not prefixes
    odd.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %} assistant{% endif %}"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    with pytest.raises(DataError, match="prefixes"):
        tokenize_chat(odd, msgs, TokenizeOptions(max_length=16))


def test_classification_keeps_special_tokens_when_truncating(bert_tokenizer: Any) -> None:
    text = "a truly great film with a plot that never stops surprising and moving the audience"
    full, cut_full = tokenize_classification(bert_tokenizer, text, 1, TokenizeOptions(max_length=512))
    assert not cut_full and full["label"] == 1 and full["attention_mask"] == [1] * len(full["input_ids"])
    for side in ("right", "left"):
        ex, cut = tokenize_classification(bert_tokenizer, text, 0, TokenizeOptions(max_length=6,
                                                                                   truncation_side=side))
        ids = ex["input_ids"]
        assert cut and len(ids) == 6
        assert ids[0] == bert_tokenizer.cls_token_id and ids[-1] == bert_tokenizer.sep_token_id
        body = full["input_ids"][1:-1]
        assert ids[1:-1] == (body[:4] if side == "right" else body[-4:])


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_length"):
        TokenizeOptions(max_length=1)
    with pytest.raises(ConfigError, match="'middle'"):
        TokenizeOptions(max_length=8, truncation_side="middle")  # type: ignore[arg-type]
