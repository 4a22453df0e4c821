"""YAML recipes: one file says which model, which PEFT method, which data and how to train, parsed into typed
frozen dataclasses, with ``key.sub=value`` overrides from the command line. The resolved recipe is saved in the
run folder so that a run can always be repeated.

    model: {name: "builtin:smollm2", dtype: float32}
    method: {type: lora, r: 16, alpha: 32, targets: all-linear}
    data: {train: {path: train.jsonl, schema: chat}, max_length: 256}
    train: {steps: 200, batch_size: 8, lr: 2.0e-4}
    output_dir: runs/smollm2-lora
    seed: 0
    eval: {sets: {test: {path: test.jsonl, schema: chat}}, latency: false}   # optional: evaluate after training

``method: {type: full}`` trains every weight of the model (full fine-tuning, the baseline of every PEFT
method); the run then saves the whole model (RUN/model/) instead of an adapter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from slimtune.errors import ConfigError
from slimtune.train.config import TrainConfig

log = logging.getLogger(__name__)

DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
BUILTINS: tuple[str, ...] = ("builtin:smollm2", "builtin:minilm")
RECIPE_NAME = "recipe.yaml"
FULL = "full"
"""method.type of full fine-tuning (no adapter: every parameter trains)."""


@dataclass(frozen=True)
class ModelSpec:
    """Which base model to fine-tune."""

    name: str
    """"builtin:smollm2" (causal LM), "builtin:minilm" (encoder for classification) or a local model folder."""
    dtype: DTypeName = "float32"
    """Weights dtype when loading: float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model.name must be a non-empty string, got {self.name!r}")
        if self.name.startswith("builtin:") and self.name not in BUILTINS:
            raise ConfigError(f"model.name {self.name!r} is not a built-in model; built-ins: {', '.join(BUILTINS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")


@dataclass(frozen=True)
class Recipe:
    """A whole fine-tuning run."""

    model: ModelSpec
    """The base model."""
    method: dict[str, Any]
    """The PEFT method: {"type": "lora", ...the method config's fields}; see ``adapter_config()``."""
    train: TrainConfig
    """How to train (TrainConfig's fields)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Passed as-is to the data layer: {"train": {"path", "schema"}, "eval": {...}, "max_length", "packing"}."""
    output_dir: str = "runs/default"
    """The run folder: adapter/, checkpoints/, metrics.jsonl, recipe.yaml."""
    seed: int = 0
    """The run's seed; also the trainer's unless train.seed says otherwise."""
    eval: dict[str, Any] | None = None
    """Evaluation after training (slimtune.eval.plan): sets (default: data.eval), task, forgetting, batch_size,
    n_resamples, confidence, max_new_tokens, latency, prices. None: no evaluation after training."""

    @property
    def full_fine_tune(self) -> bool:
        """``method: {type: full}``: every parameter trains, no adapter."""
        return str(self.method.get("type", "")).lower() == FULL

    def adapter_config(self) -> Any:
        """The method section as the method's config object (e.g. slimtune.LoraConfig)."""
        if self.full_fine_tune:
            raise ConfigError("method.type 'full' (full fine-tuning) has no adapter config")
        return method_config(self.method)

    def to_dict(self) -> dict[str, Any]:
        out = {"model": dataclasses.asdict(self.model), "method": dict(self.method), "data": dict(self.data),
               "train": self.train.to_dict(), "output_dir": self.output_dir, "seed": self.seed}
        return out if self.eval is None else {**out, "eval": dict(self.eval)}


def method_config(method: dict[str, Any]) -> Any:
    """``{"type": "lora", "r": 16, ...}`` -> the registered method's config (looked up by PEFT type)."""
    import slimtune  # noqa: F401  (registers every method)
    from slimtune.core.plugin import known_peft_types, spec_for_peft_type

    if not isinstance(method, dict) or "type" not in method:
        raise ConfigError(f"method must be a mapping with a 'type' (one of {_lower(known_peft_types())}, {FULL}), "
                          f"got {method!r}")
    kind = str(method["type"])
    if kind.upper() not in known_peft_types():
        raise ConfigError(f"method.type {kind!r} is unknown; known methods: {_lower(known_peft_types())}, {FULL}")
    cls = spec_for_peft_type(kind.upper()).config_cls
    options = coerce_floats(cls, {k: v for k, v in method.items() if k != "type"})
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown method option(s) {unknown} for {kind!r}; known options: {', '.join(known)}")
    try:
        return cls(**options)
    except ConfigError as exc:
        raise ConfigError(f"method: {exc}") from exc


def _lower(names: list[str]) -> str:
    return ", ".join(n.lower() for n in names)


# ----- loading -----------------------------------------------------------------------------------------
_TOP = [f.name for f in fields(Recipe)]
_REQUIRED = ("model", "method", "train")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``key.sub=value`` overrides (values parsed as YAML), validate, build."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping with keys {', '.join(_TOP)}; got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    try:
        return recipe_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"recipe {path}: {exc}") from exc


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the nested mapping (in place); the value is parsed as YAML ("3" is 3)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. train.lr=1e-4)")
    parts = key.strip().split(".")
    if parts[0] not in _TOP:
        raise ConfigError(f"override {item!r}: unknown recipe key {parts[0]!r}; known keys: {', '.join(_TOP)}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from exc
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} holds {child!r}, not a mapping")
        node = child
    node[parts[-1]] = value


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    unknown = sorted(set(raw) - set(_TOP))
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {unknown}; known keys: {', '.join(_TOP)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"the recipe lacks {missing}; a recipe needs {', '.join(_REQUIRED)}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    model = _section(raw, "model", ModelSpec)
    train_raw = _mapping(raw, "train")
    if "seed" in train_raw and "seed" in raw and train_raw["seed"] != seed:
        raise ConfigError(f"seed is {seed!r} but train.seed is {train_raw['seed']!r}; give one of them")
    train = _section({"train": {**train_raw, "seed": train_raw.get("seed", seed)}}, "train", TrainConfig)
    method = _mapping(raw, "method")
    _validate_method(method)  # now, not at training time
    output_dir = raw.get("output_dir", "runs/default")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"output_dir must be a non-empty path string, got {output_dir!r}")
    data = _mapping(raw, "data", required=False)
    evaluation = None if raw.get("eval") is None else _mapping(raw, "eval")
    if evaluation is not None:
        _validate_eval(evaluation, data)
    return Recipe(model=model, method=method, train=train, data=data, output_dir=output_dir, seed=seed,
                  eval=evaluation)


def data_eval_sets(section: Any) -> dict[str, dict[str, Any]]:
    """``data.eval`` (one data spec with a path, or {name: spec}) as {name: spec}: the trainer's evaluation
    sets, and the default sets of the evaluation after training."""
    if section is None:
        return {}
    if isinstance(section, dict) and "path" in section:
        return {"eval": dict(section)}
    if isinstance(section, dict) and all(isinstance(v, dict) for v in section.values()):
        return {str(k): dict(v) for k, v in section.items()}
    raise ConfigError(f"data.eval must be one data spec (with a path) or {{name: spec}}, got {section!r}")


def _validate_method(method: dict[str, Any]) -> None:
    if str(method.get("type", "")).lower() != FULL:
        method_config(method)
        return
    extra = sorted(set(method) - {"type"})
    if extra:
        raise ConfigError(f"method.type 'full' (full fine-tuning) takes no options; got {extra}")


def _validate_eval(section: dict[str, Any], data: dict[str, Any]) -> None:
    """The eval: section through the evaluation layer's own schema (recipes wire the layers together)."""
    from slimtune.eval.plan import eval_plan

    eval_plan({"eval": section, "data": data})


def _mapping(raw: dict[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    value = raw.get(key, None if required else {})
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    return dict(value)


def coerce_floats(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; take such strings as numbers where the field is a float."""
    out = dict(data)
    for f in fields(cls):  # type: ignore[arg-type]
        value = out.get(f.name)
        if isinstance(value, str) and "float" in str(f.type):
            # a non-number is left as it is: the config's own validation names the field and the value
            with contextlib.suppress(ValueError):
                out[f.name] = float(value)
    return out


def _section(raw: dict[str, Any], key: str, cls: type) -> Any:
    data = coerce_floats(cls, _mapping(raw, key))
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {key} option(s) {unknown}; known options: {', '.join(known)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{key}: {exc}; known options: {', '.join(known)}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def save_resolved(recipe: Recipe, run_dir: str | Path) -> Path:
    """Write RUN/recipe.yaml: the recipe after overrides and defaults, loadable by ``load_recipe``."""
    from slimtune.formats.safe import atomic_file

    path = Path(run_dir) / RECIPE_NAME
    with atomic_file(path, "w") as f:
        yaml.safe_dump(recipe.to_dict(), f, sort_keys=False)
    return path


def load_model(spec: ModelSpec, num_labels: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for a ModelSpec: an embedded model, or a local folder (safetensors weights only).
    A folder whose config.json names a ``*ForSequenceClassification`` architecture loads as that classifier
    (with its own label count unless ``num_labels`` is given); otherwise ``num_labels`` asks for a
    sequence-classification head on the folder's model, and without it the folder loads as a causal LM. A
    built-in loads with its own head."""
    import torch

    dtype = getattr(torch, spec.dtype)
    if spec.name == "builtin:smollm2":
        from slimtune.embedded import load_smollm2

        return load_smollm2(dtype=dtype)
    if spec.name == "builtin:minilm":
        from slimtune.embedded import load_minilm

        return load_minilm(num_labels=num_labels or 2, dtype=dtype)
    folder = Path(spec.name)
    if not folder.is_dir():
        raise ConfigError(f"model.name {spec.name!r} is neither a built-in ({', '.join(BUILTINS)}) nor a folder")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kind = folder_kind(folder)
    if num_labels is not None or kind == "sequence_classification":
        labels: dict[str, Any] = {} if num_labels is None else {"num_labels": num_labels}
        if num_labels is not None and kind == "sequence_classification" and num_labels != _folder_labels(folder):
            # the folder's head has another size: it cannot be loaded, a fresh head of the asked size replaces it
            log.warning("%s has a classifier head of %s labels; training a fresh head of %d", folder,
                        _folder_labels(folder), num_labels)
            labels["ignore_mismatched_sizes"] = True
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype, use_safetensors=True,
                                                                   **labels)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    return model, _folder_tokenizer(folder)


def folder_kind(folder: Path) -> Literal["sequence_classification", "causal_lm"]:
    """What a local model folder holds, by its config.json ``architectures`` (e.g. BertForSequenceClassification);
    a folder that names none is taken as a causal LM."""
    import json

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"model folder {folder} has no config.json; save the model with save_pretrained")
    try:
        architectures = json.loads(path.read_text(encoding="utf-8")).get("architectures") or []
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "sequence_classification"
    return "causal_lm"


def _folder_labels(folder: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(folder).num_labels)


def is_classifier(model: Any) -> bool:
    """A sequence-classification model (a transformers *ForSequenceClassification)."""
    return type(model).__name__.endswith("ForSequenceClassification")


def _folder_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").is_file() else None


def load_tokenizer(spec: ModelSpec) -> Any:
    """The tokenizer of a ModelSpec, without loading a folder's weights (a built-in loads whole)."""
    folder = Path(spec.name)
    if not spec.name.startswith("builtin:") and folder.is_dir():
        return _folder_tokenizer(folder)
    return load_model(spec)[1]
