"""Canonical rows to token ids and labels with a transformers tokenizer.

Causal schemas give `input_ids` and `labels` (unshifted, Hugging Face style: the model shifts them), with
-100 wherever no loss is wanted: prompt tokens, and every chat token outside the assistant turns.
Classification gives `input_ids`, `attention_mask` and an int `label`. Truncation keeps `max_length`
tokens from the start (`truncation_side="right"`, the default) or from the end ("left").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from slimtune.errors import ConfigError, DataError

from .records import BadRow, Row

IGNORE_INDEX = -100
TruncationSide = Literal["right", "left"]
LmOverflow = Literal["truncate", "chunk"]
Example = dict[str, Any]


@dataclass(frozen=True)
class TokenizeOptions:
    """How rows become token ids."""

    max_length: int
    """Longest example in tokens; longer ones are truncated (or chunked, for plain text)."""
    truncation_side: TruncationSide = "right"
    """"right" keeps the first max_length tokens, "left" the last ones."""
    add_eos: bool = True
    """Append the tokenizer's EOS to plain text and completions so the model learns to stop."""
    lm_overflow: LmOverflow = "truncate"
    """Plain text longer than max_length: truncate it, or cut it into max_length chunks."""
    end_of_turn_token: str | None = None
    """Token that closes an assistant turn (default: the tokenizer's EOS); tokens after it are not trained."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"max_length must be an int >= 2, got {self.max_length!r}")
        if self.truncation_side not in ("right", "left"):
            raise ConfigError(f"truncation_side must be 'right' or 'left', got {self.truncation_side!r}")
        if self.lm_overflow not in ("truncate", "chunk"):
            raise ConfigError(f"lm_overflow must be 'truncate' or 'chunk', got {self.lm_overflow!r}")


@dataclass
class TokenizeStats:
    """Counts over one tokenization pass."""

    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    truncated: int = 0
    skipped: list[BadRow] = field(default_factory=list)


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _cut(seq: list[int], n: int, side: TruncationSide) -> list[int]:
    return seq[:n] if side == "right" else seq[len(seq) - n:]


def _truncate(ex: Example, opts: TokenizeOptions) -> tuple[Example, bool]:
    n = len(ex["input_ids"])
    if n <= opts.max_length:
        return ex, False
    return {k: _cut(v, opts.max_length, opts.truncation_side) if isinstance(v, list) else v
            for k, v in ex.items()}, True


def tokenize_text(tokenizer: Any, text: str, opts: TokenizeOptions) -> list[Example]:
    """Language modelling: labels equal input_ids; EOS appended; chunked when lm_overflow="chunk"."""
    ids = _ids(tokenizer, text, special=True)
    eos = tokenizer.eos_token_id
    if opts.add_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    if opts.lm_overflow == "chunk" and len(ids) > opts.max_length:
        chunks = [ids[i:i + opts.max_length] for i in range(0, len(ids), opts.max_length)]
        return [{"input_ids": c, "labels": list(c)} for c in chunks if len(c) >= 2]
    return [{"input_ids": ids, "labels": list(ids)}]


def tokenize_prompt_completion(
    tokenizer: Any, prompt: str, completion: str, opts: TokenizeOptions
) -> Example:
    """Prompt then completion (tokenized apart, so the boundary is exact); loss on completion tokens only."""
    p = _ids(tokenizer, prompt, special=True) if prompt else []
    c = _ids(tokenizer, completion, special=False)
    if opts.add_eos and tokenizer.eos_token_id is not None:
        c.append(tokenizer.eos_token_id)
    return {"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c}


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation_prompt
    )
    ids = out["input_ids"] if hasattr(out, "keys") else out
    if ids and isinstance(ids[0], list):  # some versions batch a single conversation
        ids = ids[0]
    return [int(i) for i in ids]


def _end_of_turn_id(tokenizer: Any, opts: TokenizeOptions) -> int | None:
    if opts.end_of_turn_token is None:
        return tokenizer.eos_token_id  # type: ignore[no-any-return]
    tid = tokenizer.convert_tokens_to_ids(opts.end_of_turn_token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ConfigError(f"end_of_turn_token {opts.end_of_turn_token!r} is not in the tokenizer's "
                          "vocabulary")
    return int(tid)


def _opening(tokenizer: Any, first: dict[str, str]) -> list[int]:
    """What the template renders before an opening assistant turn's content (there is no prefix to
    render): the common prefix of that turn with its content and with empty content."""
    real = _render(tokenizer, [first], generation_prompt=False)
    empty = _render(tokenizer, [{**first, "content": ""}], generation_prompt=False)
    pairs = enumerate(zip(real, empty, strict=False))
    n = next((k for k, (a, b) in pairs if a != b), min(len(real), len(empty)))
    return real[:n]


def assistant_spans(
    tokenizer: Any, messages: Sequence[dict[str, str]], end_of_turn_id: int | None = None
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the rendered chat and the [start, end) spans of the assistant turns.

    Each conversation prefix is rendered with the chat template and the token lengths are diffed: the
    assistant turn i spans from the end of `messages[:i]` plus the generation prompt to the end of
    `messages[:i+1]`, cut just after its end-of-turn token (what follows, e.g. a newline, is template).
    Templates that do not render prefixes as prefixes are refused rather than mislabelled.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the tokenizer has no chat template; set tokenizer.chat_template or use the "
                          "prompt_completion schema")
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else _opening(tokenizer, msg)
        start = len(before)
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if full[:start] != before or full[: len(upto)] != upto:
            raise DataError(f"the chat template does not render conversation prefixes as prefixes of the "
                            f"whole (turn {i}); assistant tokens cannot be located safely")
        turn = full[start:len(upto)]
        end = len(upto)
        if end_of_turn_id is not None and end_of_turn_id in turn:
            end = start + len(turn) - turn[::-1].index(end_of_turn_id)
        spans.append((start, end))
    return full, spans


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]], opts: TokenizeOptions) -> Example:
    """Chat through the tokenizer's template; loss only on assistant tokens (content and end of turn)."""
    ids, spans = assistant_spans(tokenizer, messages, _end_of_turn_id(tokenizer, opts))
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return {"input_ids": ids, "labels": labels}


def tokenize_classification(
    tokenizer: Any, text: str, label: int, opts: TokenizeOptions
) -> tuple[Example, bool]:
    """Sequence classification: the tokenizer's special tokens are kept, the text between them truncated."""
    enc = tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    truncated = len(ids) > opts.max_length
    if truncated:
        lead = next((i for i, s in enumerate(special) if not s), len(ids))
        trail = next((i for i, s in enumerate(reversed(special)) if not s), 0)
        budget = max(opts.max_length - lead - trail, 0)
        body = _cut(ids[lead:len(ids) - trail], budget, opts.truncation_side)
        ids = ids[:lead] + body + ids[len(ids) - trail:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "label": int(label)}, truncated


def _row_examples(tokenizer: Any, row: Row, schema: str, opts: TokenizeOptions) -> tuple[list[Example], bool]:
    d = row.data
    if schema == "classification":
        ex, truncated = tokenize_classification(tokenizer, d["text"], d["label"], opts)
        return [ex], truncated
    if schema == "text":
        raw = tokenize_text(tokenizer, d["text"], opts)
    elif schema == "prompt_completion":
        raw = [tokenize_prompt_completion(tokenizer, d["prompt"], d["completion"], opts)]
    elif schema == "chat":
        raw = [tokenize_chat(tokenizer, d["messages"], opts)]
    else:
        raise ConfigError(f"cannot tokenize schema {schema!r}")
    pairs = [_truncate(ex, opts) for ex in raw]
    return [ex for ex, _ in pairs], any(t for _, t in pairs)


def tokenize_rows(
    rows: Sequence[Row], schema: str, tokenizer: Any, opts: TokenizeOptions
) -> tuple[list[Example], TokenizeStats]:
    """Tokenize validated rows; examples left with no loss token are skipped and reported, not raised.

    Every example carries `source` ("path:line") for lineage; collators ignore it.
    """
    stats = TokenizeStats()
    examples: list[Example] = []
    for row in rows:
        made, truncated = _row_examples(tokenizer, row, schema, opts)
        stats.truncated += int(truncated)
        for ex in made:
            n_loss = 1 if schema == "classification" else sum(t != IGNORE_INDEX for t in ex["labels"][1:])
            if n_loss == 0:
                reason = f"no trainable token left after truncation to max_length={opts.max_length}"
                stats.skipped.append(BadRow(row.source.path, row.source.line, reason))
                continue
            ex["source"] = str(row.source)
            examples.append(ex)
            stats.tokens += len(ex["input_ids"])
            stats.loss_tokens += n_loss
    stats.examples = len(examples)
    return examples, stats


__all__ = [
    "IGNORE_INDEX", "Example", "LmOverflow", "TokenizeOptions", "TokenizeStats", "TruncationSide", "assistant_spans",
    "tokenize_chat", "tokenize_classification", "tokenize_prompt_completion", "tokenize_rows",
    "tokenize_text",
]
