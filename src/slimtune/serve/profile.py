"""Reference profiles of adapter versions, and the per-request features the server compares with them.

A profile is built at evaluation time (``build_profile``) and saved as ``profile.json`` inside the adapter
folder before ``slimtune registry add``, so it is versioned, hashed and verified with the adapter's
weights. Features: prompt length, a hashed token-id histogram, projections of the base model's mean-pooled
last hidden state onto fixed random directions, output length and mean token log-probability.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.core.model import AdaptedModel
from slimtune.errors import LoadError
from slimtune.serve.generation import GenResult, GenRow, generate_rows, left_pad, model_device, positions

PROFILE_NAME = "profile.json"
N_BUCKETS = 64
N_DIRECTIONS = 4
DIRECTION_SEED = 20261201
_HASH_MUL = 2654435761  # Knuth's multiplicative hash: spreads neighbouring ids over buckets


@dataclass
class RequestFeatures:
    """What the monitor records about one request."""

    prompt_len: int
    output_len: int
    mean_logprob: float | None
    """None when nothing was generated."""
    projections: list[float]
    """(N_DIRECTIONS,) projections of the pooled base hidden state."""
    buckets: dict[int, int]
    """Hashed token-id bucket -> count, over the prompt."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestFeatures:
        return cls(int(data["prompt_len"]), int(data["output_len"]), data.get("mean_logprob"),
                   [float(x) for x in data["projections"]], {int(k): int(v) for k, v in data["buckets"].items()})


@dataclass
class Profile:
    """Reference samples of every feature for one adapter version (or the base)."""

    adapter: str | None
    prompt_len: list[int] = field(default_factory=list)
    output_len: list[int] = field(default_factory=list)
    mean_logprob: list[float] = field(default_factory=list)
    projections: list[list[float]] = field(default_factory=list)
    token_hist: list[float] = field(default_factory=lambda: [0.0] * N_BUCKETS)
    """Token counts per hashed bucket, summed over the reference prompts."""
    format_version: int = 1

    @classmethod
    def from_features(cls, adapter: str | None, feats: Sequence[RequestFeatures]) -> Profile:
        prof = cls(adapter)
        for f in feats:
            prof.prompt_len.append(f.prompt_len)
            prof.output_len.append(f.output_len)
            if f.mean_logprob is not None:
                prof.mean_logprob.append(f.mean_logprob)
            if f.projections:  # empty when the server skipped the hidden-state pass for this batch
                prof.projections.append(list(f.projections))
            for b, c in f.buckets.items():
                prof.token_hist[b] += c
        return prof

    @property
    def size(self) -> int:
        return len(self.prompt_len)

    def save(self, folder: Path | str) -> Path:
        """Write ``profile.json`` into ``folder`` (the adapter folder, before ``registry add``)."""
        path = Path(folder) / PROFILE_NAME
        path.write_text(json.dumps(asdict(self)) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> Profile:
        """Read a profile (a folder holding profile.json, or the file); LoadError if unusable."""
        path = Path(path)
        path = path / PROFILE_NAME if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
            prof = cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise LoadError(f"cannot read the reference profile {path}: {exc}") from exc
        if len(prof.token_hist) != N_BUCKETS:
            raise LoadError(f"{path}: token_hist has {len(prof.token_hist)} buckets, expected {N_BUCKETS}")
        return prof


def bucket_counts(token_ids: Sequence[int]) -> dict[int, int]:
    """Hashed histogram of token ids over N_BUCKETS buckets."""
    counts: dict[int, int] = {}
    for t in token_ids:
        b = (int(t) * _HASH_MUL) % (2**32) % N_BUCKETS
        counts[b] = counts.get(b, 0) + 1
    return counts


def directions(hidden_size: int) -> torch.Tensor:
    """(N_DIRECTIONS, H) fixed random unit vectors (the same for a profile and the live server)."""
    gen = torch.Generator().manual_seed(DIRECTION_SEED)
    dirs = torch.randn(N_DIRECTIONS, hidden_size, generator=gen)
    return dirs / dirs.norm(dim=-1, keepdim=True)


@torch.inference_mode()
def pooled_projections(model: nn.Module, prompts: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """(B, N_DIRECTIONS): the base model's last hidden states, mean-pooled over real tokens, projected."""
    ids, mask = (t.to(model_device(model)) for t in left_pad(prompts, pad_id))  # (B, T)
    adapted = isinstance(model, AdaptedModel)
    inner: Any = model.model if adapted else model
    ctx = model.disabled() if isinstance(model, AdaptedModel) else contextlib.nullcontext()
    with ctx:
        hidden = inner.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, H)
    return pooled.float().cpu() @ directions(pooled.shape[-1]).T


def features_of(prompt_ids: Sequence[int], projection: Sequence[float], result: GenResult) -> RequestFeatures:
    """The features of one finished request."""
    lp = result.logprobs
    return RequestFeatures(
        prompt_len=len(prompt_ids), output_len=len(result.token_ids),
        mean_logprob=(sum(lp) / len(lp)) if lp else None, projections=[float(x) for x in projection],
        buckets=bucket_counts(prompt_ids),
    )


def build_profile(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    adapter_name: str | None,
    max_tokens: int = 32,
    batch_size: int = 8,
) -> Profile:
    """Profile ``adapter_name`` (loaded in the AdaptedModel ``model``; None: the base) on ``prompts``.

    Give the prompts as the server will see them: for chat traffic, the chat-templated text
    (``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``). Outputs are
    greedy, ``max_tokens`` long at most, and stop at the tokenizer's end-of-sequence token.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stops = frozenset({tokenizer.eos_token_id} - {None})
    feats: list[RequestFeatures] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        rows = [GenRow(ids, adapter_name, max_tokens, stop_ids=stops) for ids in encoded]
        results = generate_rows(model, rows, pad, mixed=isinstance(model, AdaptedModel))
        proj = pooled_projections(model, encoded, pad)
        for i, (ids, result) in enumerate(zip(encoded, results, strict=True)):
            feats.append(features_of(ids, proj[i].tolist(), result))
    return Profile.from_features(adapter_name, feats)
