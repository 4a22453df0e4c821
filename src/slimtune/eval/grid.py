"""An ablation grid (``grid.yaml``) expanded into cells: methods x ranks x target groups x layers x learning
rates x seeds, plus leave-one-component-out cells (drop one target group, drop one layer range) around a
reference method. Target groups and layer ranges stay symbolic here and are resolved against the model.

    methods:                       # name -> a recipe method section; "lr" pins that method's learning rate,
      lora: {type: lora}           # "train" overrides train: options for its cells (e.g. steps)
      dora: {type: lora, use_dora: true, r: 8, targets: all}
      full: {type: full, lr: 5.0e-5, train: {steps: 60}}   # full fine-tuning baseline
    ranks: [4, 16]                 # to methods with an r that the method does not pin (alpha = 2r unless pinned)
    targets: [attention, mlp, all] # to methods with targets and r (LoRA, DoRA) that do not pin them
    layers: [all, "0-2"]           # idem, through LoraConfig.layers
    lrs: [5.0e-4]
    seeds: [0, 1, 2]
    head: [classifier]             # trained fully in every cell (modules_to_save, or a selective adapter)
    leave_one_out: {method: lora, targets: true, layers: ["0-1", "2-3"]}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from slimtune.errors import ConfigError

GRID_KEYS = ("methods", "ranks", "targets", "layers", "lrs", "seeds", "head", "leave_one_out", "latency")
#: keys of a grid method that belong to the grid, not to the method's config
METHOD_GRID_KEYS = ("lr", "train")
GROUP_NAMES = ("attention", "mlp")

#: target groups per model_type, as full-path regular expressions
TARGET_GROUPS: dict[str, dict[str, str]] = {
    "bert": {"attention": r".*\.attention\.(self\.(query|key|value)|output\.dense)",
             "mlp": r".*\.layer\.\d+\.(intermediate|output)\.dense"},
    "llama": {"attention": r".*\.self_attn\.(q|k|v|o)_proj", "mlp": r".*\.mlp\.(gate|up|down)_proj"},
    "gpt2": {"attention": r".*\.attn\.c_(attn|proj)", "mlp": r".*\.mlp\.c_(fc|proj)"},
}
for _alias, _like in (("roberta", "bert"), ("mistral", "llama"), ("qwen2", "llama")):
    TARGET_GROUPS[_alias] = TARGET_GROUPS[_like]


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    cell_id: str
    """Unique, filesystem-safe: "<group>_s<seed>"."""
    group: str
    """The cell without its seed: what means and spreads are taken over."""
    method_name: str
    method: dict[str, Any]
    """The method section, target groups and layer specs still symbolic ("attention", "drop:0-1")."""
    lr: float
    seed: int
    head: tuple[str, ...] = ()
    axes: dict[str, Any] = field(default_factory=dict)
    """What distinguishes this cell, for tables: {"method", "r", "targets", "layers", "lr", "ablation"}."""
    train: dict[str, Any] = field(default_factory=dict)
    """The method's overrides of the recipe's train: options (lr and seed come from the cell itself)."""

    def fingerprint(self, base_recipe: dict[str, Any]) -> str:
        """sha256 of everything that decides the cell's result: a finished cell with another is stale."""
        body: dict[str, Any] = {"method": self.method, "lr": self.lr, "seed": self.seed, "head": list(self.head),
                                "recipe": {k: v for k, v in base_recipe.items() if k not in ("output_dir",)}}
        if self.train:
            body["train"] = self.train
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "group": self.group, "method_name": self.method_name,
                "method": self.method, "lr": self.lr, "seed": self.seed, "head": list(self.head),
                "axes": dict(self.axes), "train": dict(self.train)}


def _list(grid: dict[str, Any], key: str, default: list[Any]) -> list[Any]:
    value = grid.get(key, default)
    if value is None:
        return default
    if not isinstance(value, list) or not value:
        raise ConfigError(f"grid.{key} must be a non-empty list, got {value!r}")
    return value


def _fields_of(method: dict[str, Any]) -> set[str]:
    """Field names of the method's config class ("full" has none)."""
    if method.get("type") == "full":
        return set()
    from dataclasses import fields as dc_fields

    import slimtune  # noqa: F401  (registers every method)
    from slimtune.core.plugin import known_peft_types, spec_for_peft_type

    kind = str(method.get("type", "")).upper()
    if kind not in known_peft_types():
        raise ConfigError(f"grid method type {method.get('type')!r} is unknown; known: full, "
                          f"{', '.join(t.lower() for t in known_peft_types())}")
    return {f.name for f in dc_fields(spec_for_peft_type(kind).config_cls)}  # type: ignore[arg-type]


def _tag(value: Any) -> str:
    return str(value).replace("/", "-").replace(" ", "").replace(":", "-")


def _variants(name: str, method: dict[str, Any], grid: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(method section, axes) for one named method over ranks, target groups and layers."""
    own = _fields_of(method)
    lora_like = {"r", "targets"} <= own
    ranks = _list(grid, "ranks", [None]) if "r" in own and "r" not in method else [method.get("r")]
    groups = _list(grid, "targets", [None]) if lora_like and "targets" not in method else [method.get("targets")]
    layers = _list(grid, "layers", [None]) if lora_like and "layers" not in method else [method.get("layers")]
    out = []
    for r in ranks:
        for group in groups:
            for layer in layers:
                section = {k: v for k, v in method.items() if k not in METHOD_GRID_KEYS}
                axes: dict[str, Any] = {"method": name}
                if r is not None:
                    section["r"], axes["r"] = int(r), int(r)
                    section.setdefault("alpha", 2 * int(r))
                if group is not None:
                    section["targets"], axes["targets"] = group, group
                if layer not in (None, "all"):
                    section["layers"], axes["layers"] = layer, layer
                out.append((section, axes))
    return out


def _leave_one_out(grid: dict[str, Any], methods: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    spec = grid.get("leave_one_out")
    if not spec:
        return []
    name = spec.get("method")
    if name not in methods:
        raise ConfigError(f"grid.leave_one_out.method {name!r} is not one of grid.methods {sorted(methods)}")
    reference, axes = _variants(name, methods[name], {**grid, "targets": ["all"], "layers": [None]})[0]
    out = []
    if spec.get("targets"):
        for group in GROUP_NAMES:
            ablation = f"all-minus-{group}"
            out.append((name, {**reference, "targets": ablation}, {**axes, "targets": ablation,
                                                                 "ablation": f"drop {group}"}))
    for layer_range in spec.get("layers") or []:
        out.append((name, {**reference, "layers": f"drop:{layer_range}"},
                    {**axes, "layers": f"drop:{layer_range}", "ablation": f"drop layers {layer_range}"}))
    return out


def expand_grid(grid: dict[str, Any]) -> list[Cell]:
    """Every cell of the grid, in a stable order (methods as listed, then ablations; seeds innermost)."""
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"unknown grid key(s) {unknown}; known keys: {', '.join(GRID_KEYS)}")
    methods = grid.get("methods")
    if not isinstance(methods, dict) or not methods or not all(isinstance(m, dict) for m in methods.values()):
        raise ConfigError(f"grid.methods must map names to method sections, got {methods!r}")
    lrs, seeds = _list(grid, "lrs", [None]), [int(s) for s in _list(grid, "seeds", [0])]
    head = tuple(grid.get("head") or ())
    plan = [(n, s, a) for n, m in methods.items() for s, a in _variants(n, m, grid)] + _leave_one_out(grid, methods)
    cells: list[Cell] = []
    for name, section, axes in plan:
        pinned, train = methods[name].get("lr"), _train_overrides(name, methods[name])
        for lr in [pinned] if pinned is not None else lrs:
            if lr is None:
                raise ConfigError(f"method {name!r} has no learning rate: give grid.lrs or methods.{name}.lr")
            group = "_".join([name] + [f"{k}{_tag(v)}" for k, v in axes.items() if k not in ("method", "ablation")]
                             + [f"lr{float(lr):.0e}"] + [f"{k}{_tag(v)}" for k, v in sorted(train.items())])
            for seed in seeds:
                cells.append(Cell(f"{group}_s{seed}", group, name, section, float(lr), seed, head,
                                  {**axes, "lr": float(lr), **train}, train))
    ids = [c.cell_id for c in cells]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"the grid yields duplicate cells {duplicates}; remove repeated axis values")
    return cells


def _train_overrides(name: str, method: dict[str, Any]) -> dict[str, Any]:
    """methods.NAME.train: TrainConfig options for this method's cells (not lr or seed: the grid sets them)."""
    from dataclasses import fields as dc_fields

    from slimtune.train.config import TrainConfig

    train = method.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"grid methods.{name}.train must be a mapping of train options, got {train!r}")
    known = sorted({f.name for f in dc_fields(TrainConfig)} - {"lr", "seed"})
    unknown = sorted(set(train) - set(known))
    if unknown:
        raise ConfigError(f"unknown grid methods.{name}.train option(s) {unknown} (lr is methods.{name}.lr, seeds "
                          f"are grid.seeds); known options: {', '.join(known)}")
    return dict(train)


# ----- resolving symbolic targets and layers against a model ---------------------------------------------
def resolve_targets(spec: Any, model_type: str | None) -> Any:
    """"attention" / "mlp" / "all" / "all-minus-<group>" -> a regex for this architecture; others unchanged."""
    if not isinstance(spec, str) or not (spec in (*GROUP_NAMES, "all") or spec.startswith("all-minus-")):
        return spec
    groups = TARGET_GROUPS.get(str(model_type))
    if groups is None:
        if spec == "all":
            return "all-linear"
        raise ConfigError(f"target group {spec!r} has no patterns for model_type {model_type!r} "
                          f"(known: {sorted(TARGET_GROUPS)}); give module names instead")
    if spec == "all":
        chosen = list(GROUP_NAMES)
    elif spec.startswith("all-minus-"):
        dropped = spec.removeprefix("all-minus-")
        if dropped not in GROUP_NAMES:
            raise ConfigError(f"target ablation {spec!r}: unknown group {dropped!r}; groups: {GROUP_NAMES}")
        chosen = [g for g in GROUP_NAMES if g != dropped]
    else:
        chosen = [spec]
    return "|".join(f"(?:{groups[g]})" for g in chosen)


def parse_range(text: str) -> list[int]:
    """"2-4" -> [2, 3, 4]; "3" -> [3]."""
    try:
        low, _, high = str(text).partition("-")
        first, last = int(low), int(high or low)
    except ValueError as exc:
        raise ConfigError(f"layer range {text!r} must look like '2-4' or '3'") from exc
    if first < 0 or last < first:
        raise ConfigError(f"layer range {text!r} is empty or negative")
    return list(range(first, last + 1))


def resolve_layers(spec: Any, num_layers: int) -> tuple[int, ...] | None:
    """None/"all" -> None; "0-2" -> (0, 1, 2); "drop:0-1" -> every other layer; a list stays."""
    if spec in (None, "all"):
        return None
    if isinstance(spec, list | tuple):
        return tuple(int(x) for x in spec)
    text = str(spec)
    drop = text.startswith("drop:")
    chosen = parse_range(text.removeprefix("drop:"))
    if max(chosen) >= num_layers:
        raise ConfigError(f"layer range {text!r} exceeds the model's {num_layers} layers")
    if drop:
        kept = tuple(i for i in range(num_layers) if i not in chosen)
        if not kept:
            raise ConfigError(f"{text!r} drops every layer; nothing would train")
        return kept
    return tuple(chosen)
