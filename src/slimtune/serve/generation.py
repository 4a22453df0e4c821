"""One batched, token-by-token decoding loop over a KV cache: left-padded prompts, one adapter per row.

Left padding with an attention mask and explicit position ids (counted over real tokens only) makes every
row compute what it would compute alone, so a batched greedy run gives the tokens of unbatched runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

# (token id, log-probability) -> True to stop this row now (a stop string was completed, or it was cancelled)
TokenCallback = Callable[[int, float], bool]


@dataclass
class GenRow:
    """One prompt to continue."""

    prompt_ids: list[int]
    adapter: str | None
    """The adapter's name inside the model (None: the base)."""
    max_tokens: int
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    """Token ids that end the row (not emitted)."""
    on_token: TokenCallback | None = None


@dataclass
class GenResult:
    """What one row produced."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    """Log-probability of each emitted token under the model's untempered distribution."""
    finish_reason: str = "length"
    """``stop`` (stop token or string), ``length`` (max_tokens) or ``cancelled``."""


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        if prompt:
            ids[i, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[i, width - len(prompt):] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens: (B, T); padding gets 0."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights live (inputs go there)."""
    return next(model.parameters()).device


def _choose(logits: torch.Tensor, row: GenRow, gen: torch.Generator | None) -> int:
    """Next token for one row from its (V,) logits: greedy, or temperature + nucleus sampling."""
    if row.temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / row.temperature, dim=-1)
    if row.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < row.top_p  # the smallest prefix whose mass reaches top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen).item())


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def _record(row: GenRow, result: GenResult, token: int, logprob: float) -> bool:
    """Add a token to a row; True when the row is finished."""
    if token in row.stop_ids:
        result.finish_reason = "stop"
        return True
    result.token_ids.append(token)
    result.logprobs.append(logprob)
    if row.on_token is not None and row.on_token(token, logprob):
        result.finish_reason = "stop"
        return True
    if len(result.token_ids) >= row.max_tokens:
        result.finish_reason = "length"
        return True
    return False


@torch.inference_mode()
def generate_rows(model: nn.Module, rows: Sequence[GenRow], pad_id: int, mixed: bool = True) -> list[GenResult]:
    """Decode every row to its end as one batch; ``mixed`` passes one adapter name per row to the model.

    ``model`` is an AdaptedModel (or any causal LM when ``mixed`` is False). Rows that finish early keep
    feeding a pad token until the last row is done; their outputs are ignored.
    """
    device = model_device(model)
    ids, mask = (t.to(device) for t in left_pad([r.prompt_ids for r in rows], pad_id))  # (B, T)
    pos = positions(mask)
    extra = {"adapter_names": [r.adapter for r in rows]} if mixed else {}
    gens = [_generator(r.seed) for r in rows]
    results = [GenResult() for _ in rows]
    done = [False] * len(rows)
    past = None
    step_ids, step_pos = ids, pos
    for _ in range(max(r.max_tokens for r in rows)):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, cache=past,
                    use_cache=True, logits_to_keep=1, **extra)
        past = out.cache
        logits = out.logits[:, -1, :].float().cpu()  # (B, V); sampling runs on the CPU, row by row
        logprobs = torch.log_softmax(logits, dim=-1)
        nxt = torch.full((len(rows), 1), pad_id, dtype=torch.long)  # built on the CPU, moved once per step
        for i, row in enumerate(rows):
            if done[i]:
                continue
            token = _choose(logits[i], row, gens[i])
            nxt[i, 0] = token
            done[i] = _record(row, results[i], token, float(logprobs[i, token]))
        if all(done):
            break
        step_ids = nxt.to(device)  # (B, 1)
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        step_pos = step_pos[:, -1:] + 1
    return results
