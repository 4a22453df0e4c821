"""Mixed-adapter batches in the spirit of punica's BGMV/SGMV: every row's own LoRA in two products.

The adapters' A are stacked into one (R, in) matrix and their B into one (out, R), R the sum of ranks. One
product gives every adapter's ``x A^T`` for every token; a per-row mask that holds each adapter's scaling on
its own columns and zero elsewhere keeps only the row's own adapter; one more product with the stacked B,
accumulated onto the base matmul, finishes. Cost is that of a single LoRA of rank R, whatever the number of
adapters, and the base product runs once over the whole batch (no gather / scatter of rows).

Where each adapter's rows lie together (a server that groups requests by adapter) and the batch is large,
it is cheaper still to form each adapter's ``W + s B A`` for the call and run one product per group of rows
straight into its part of the output: the base product's work, plus a weight-sized pass per adapter
(``grouped_pays``). Without gradients only.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch

_CACHE_SIZE = 1024
_stacks: OrderedDict[tuple, tuple[tuple[weakref.ref, ...], tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
_masks: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_runs: OrderedDict[tuple, list[tuple[str | None, int, int]] | None] = OrderedDict()


def _remember(cache: OrderedDict, key: tuple, value: object) -> None:
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def _stack(lora_a: Sequence[torch.Tensor], lora_b: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, in) and (out, R); cached by storage and version when no gradient flows through them (inference
    tensors, which keep no version, are stacked afresh). An entry also holds weak references to the tensors it
    was stacked from and serves only those: memory freed by one adapter and reused by another with the same
    shape must not hit the first one's stack."""
    tensors = (*lora_a, *lora_b)
    if torch.compiler.is_compiling() or any(t.is_inference() or (torch.is_grad_enabled() and t.requires_grad)
                                            for t in tensors):
        return torch.cat(list(lora_a), 0), torch.cat(list(lora_b), 1)
    key = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors)
    hit = _stacks.get(key)
    if hit is None or any(ref() is not t for ref, t in zip(hit[0], tensors, strict=True)):
        hit = (tuple(weakref.ref(t) for t in tensors), (torch.cat(list(lora_a), 0), torch.cat(list(lora_b), 1)))
        _remember(_stacks, key, hit)
    return hit[1]


def row_scales(rows: Sequence[str | None], names: Sequence[str], ranks: Sequence[int], scalings: Sequence[float],
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(len(rows), R): adapter ``names[i]``'s scaling on its own ``ranks[i]`` columns of the rows it serves."""
    key = (tuple(rows), tuple(names), tuple(ranks), tuple(scalings), device, dtype)
    if torch.compiler.is_compiling():  # a constant of the traced graph
        return _row_table(rows, names, ranks, scalings).to(device=device, dtype=dtype)
    hit = _masks.get(key)
    if hit is None:
        hit = _row_table(rows, names, ranks, scalings).to(device=device, dtype=dtype)
        _remember(_masks, key, hit)
    return hit


def _row_table(rows: Sequence[str | None], names: Sequence[str], ranks: Sequence[int],
               scalings: Sequence[float]) -> torch.Tensor:
    starts = [sum(ranks[:i]) for i in range(len(ranks))]
    where = {n: i for i, n in enumerate(names)}
    values = [[0.0] * sum(ranks) for _ in rows]
    for row, name in enumerate(rows):
        i = where.get(name) if name is not None else None
        if i is not None:
            values[row][starts[i]:starts[i] + ranks[i]] = [scalings[i]] * ranks[i]
    return torch.tensor(values, dtype=torch.float32)


def row_runs(rows: Sequence[str | None]) -> list[tuple[str | None, int, int]] | None:
    """(name, first row, row after the last) of each run of equal names, or None if a name has rows in two
    runs (then the rows of an adapter do not lie together)."""
    key = tuple(rows)
    if key in _runs:
        return _runs[key]
    runs: list[tuple[str | None, int, int]] = []
    for i, name in enumerate(rows):
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], i + 1)
        else:
            runs.append((name, i, i + 1))
    together = runs if len(runs) == len(set(rows)) else None
    _remember(_runs, key, together)
    return together


def grouped_pays(rows: int, groups: int, in_features: int, out_features: int) -> bool:
    """Whether ``groups`` weight-sized merges move less memory than the gathered low-rank products over
    ``rows`` rows (which read the input once more and write and read an (N, out) product)."""
    return groups * 2 * in_features * out_features < rows * (in_features + 2 * out_features)


def _grouped(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, runs: list[tuple[str | None, int, int]],
             adapters: dict[str, tuple[torch.Tensor, torch.Tensor, float]], per_row: int) -> torch.Tensor:
    y = x2.new_empty(x2.shape[0], weight.shape[0])
    for name, first, stop in runs:
        part = adapters.get(name) if name is not None else None
        w = weight if part is None else torch.addmm(weight, part[1], part[0], alpha=part[2])
        rows, out = x2[first * per_row:stop * per_row], y[first * per_row:stop * per_row]
        if bias is None:
            torch.mm(rows, w.t(), out=out)
        else:
            torch.addmm(bias, rows, w.t(), out=out)
    return y


def gathered_lora(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: Sequence[torch.Tensor],
                  lora_b: Sequence[torch.Tensor], scalings: Sequence[float], names: Sequence[str],
                  rows: Sequence[str | None]) -> torch.Tensor:
    """``x W^T + b`` plus, for batch row i, adapter ``rows[i]``'s ``s (x A^T) B^T`` (None or an unknown name:
    the base alone). ``x`` is (batch, in) or (batch, T, in); A_k (r_k, in), B_k (out, r_k)."""
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    runs = row_runs(rows) if not torch.is_grad_enabled() and not torch.compiler.is_compiling() else None
    if runs is not None and len(rows) == x.shape[0] and grouped_pays(
            x2.shape[0], sum(1 for n, _, _ in runs if n in names), weight.shape[1], weight.shape[0]):
        adapters = {n: (a, b, s) for n, a, b, s in zip(names, lora_a, lora_b, scalings, strict=True)}
        y = _grouped(x2, weight, bias, runs, adapters, x2.shape[0] // len(rows))
        return y.view(*x.shape[:-1], y.shape[-1])
    a_cat, b_cat = _stack(lora_a, lora_b)  # (R, in), (out, R)
    mask = row_scales(rows, names, [a.shape[0] for a in lora_a], scalings, x.device, x.dtype)  # (batch, R)
    xa = torch.mm(x2, a_cat.t())  # (N, R)
    per_row = x2.shape[0] // mask.shape[0]
    xa = (xa.view(mask.shape[0], per_row, -1) * mask[:, None, :]).view(x2.shape[0], -1)
    low = torch.mm(xa, b_cat.t()) if bias is None else torch.addmm(bias, xa, b_cat.t())  # (N, out)
    y = low.addmm_(x2, weight.t())  # in place: no copy of the (N, out) product
    return y.view(*x.shape[:-1], y.shape[-1])
