"""Which modules an adapter goes into: target and exclude patterns with PEFT's semantics, block indices,
per-module overrides. Nothing here mutates a model."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from torch import nn

from slimtune.errors import TargetError

Targets = str | Sequence[str]
V = TypeVar("V")
M = TypeVar("M", bound=nn.Module)

# the first numbered path segment is the block index ("model.layers.3.self_attn.q_proj" -> 3), as in PEFT
_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


def matches(pattern: Targets, path: str) -> bool:
    """A string is a regular expression that must match the whole path; a list names modules by suffix."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, path) is not None
    return any(path == p or path.endswith("." + p) for p in pattern)


def layer_index(path: str) -> int | None:
    m = _LAYER_INDEX.match(path + ".")
    return int(m.group("idx")) if m else None


def pattern_value(patterns: dict[str, V], path: str, default: V) -> V:
    """Per-module override as PEFT resolves rank_pattern / alpha_pattern: the first key matching a suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def output_head_names(model: nn.Module) -> set[str]:
    """Paths of the output projection (lm_head and friends), which "all-linear" leaves out as PEFT does."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    names = {n for n, m in model.named_modules() if head is not None and m is head}
    return names or {n for n, _ in model.named_modules() if n.split(".")[-1] in {"lm_head", "embed_out"}}


def select(
    model: nn.Module,
    targets: Targets,
    *,
    exclude: Targets | None,
    layers: Sequence[int] | None,
    supported: Callable[[nn.Module], bool],
    all_linear: Callable[[nn.Module], bool],
    field: str = "targets",
) -> list[str]:
    """Module paths that the patterns pick, in model order; TargetError (listing what exists) if none."""
    from slimtune.core.layer import AdapterLayer

    heads = output_head_names(model)
    wrappers = [p + "." for p, m in model.named_modules() if p and isinstance(m, AdapterLayer)]
    chosen: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(w) for w in wrappers):  # our own layers' insides
            continue
        if not _is_candidate(path, module, targets, heads, supported, all_linear):
            continue
        if exclude and matches(exclude, path):
            continue
        if layers is not None and layer_index(path) not in set(layers):
            continue
        chosen.append(path)
    if not chosen:
        raise TargetError(_nothing_matched(model, targets, exclude, layers, supported, field))
    return chosen


def _is_candidate(
    path: str,
    module: nn.Module,
    targets: Targets,
    heads: set[str],
    supported: Callable[[nn.Module], bool],
    all_linear: Callable[[nn.Module], bool],
) -> bool:
    from slimtune.core.layer import AdapterLayer

    if isinstance(module, AdapterLayer):
        module = innermost(module)
    if targets == "all-linear":
        return all_linear(module) and path not in heads
    if not matches(targets, path):
        return False
    if not supported(module):
        raise TargetError(
            f"target pattern {targets!r} matched {path!r}, a {type(module).__name__}, which this method cannot "
            "adapt; narrow the pattern (or add the module to `exclude`)"
        )
    return True


def innermost(module: nn.Module) -> nn.Module:
    from slimtune.core.layer import AdapterLayer

    while isinstance(module, AdapterLayer):
        module = module.base_layer
    return module


def _nothing_matched(
    model: nn.Module,
    targets: Targets,
    exclude: Targets | None,
    layers: Sequence[int] | None,
    supported: Callable[[nn.Module], bool],
    field: str,
) -> str:
    leaves = sorted({p.split(".")[-1] for p, m in model.named_modules() if p and supported(innermost(m))})
    extra = ""
    if exclude:
        extra += f" after exclude={exclude!r}"
    if layers is not None:
        extra += f" in layers {list(layers)}"
    shown = ", ".join(leaves[:40]) + (" ..." if len(leaves) > 40 else "")
    return (
        f"{field} {targets!r} matched no module{extra}; modules this method can adapt here: {shown or 'none'}"
    )


def leaf_names(paths: Iterable[str]) -> list[str]:
    return sorted({p.split(".")[-1] for p in paths})


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` where ``path`` is in the module tree (the injection step of every method)."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def wrapped(model: nn.Module, path: str, layer_cls: type[M], make: Callable[[nn.Module], M]) -> M:
    """The ``layer_cls`` layer at ``path``: the one already there, or ``make(module)`` put in its place."""
    module = model.get_submodule(path)
    if isinstance(module, layer_cls):
        return module
    layer = make(module)
    replace_module(model, path, layer)
    return layer
