"""The Hugging Face PEFT adapter layout, read and written: ``adapter_config.json`` plus
``adapter_model.safetensors`` (keys ``base_model.model.<module path>.<tensor>``), a non-default adapter in a
sub-folder of its name, and slimtune's lineage manifest ``slimtune.json`` beside them (PEFT ignores it).

Loading is strict and transactional: every check runs before the model is touched, and a failure while
placing the adapter removes it again, so the model is exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune._version import __version__, git_hash
from slimtune.core.model import AdaptedModel
from slimtune.core.plugin import spec_for_config, spec_for_peft_type
from slimtune.errors import FingerprintMismatchError, KeyMismatchError, LoadError, UnsafeFormatError
from slimtune.formats.safe import PICKLE_SUFFIXES, read_json, read_tensors, write_json, write_tensors

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LINEAGE_NAME = "slimtune.json"
PREFIX = "base_model.model."

# Only task types under which PEFT adds no modules of its own: for SEQ_CLS and friends PEFT would also
# expect the classifier head in the file (modules_to_save), which a LoRA-only adapter does not carry.
_TASK_TYPES = (("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"))


def task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((task for suffix, task in _TASK_TYPES if name.endswith(suffix)), None)


def base_model_id(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None


def adapter_dir(directory: Path, name: str) -> Path:
    return directory if name == "default" else directory / name


def save_adapter(
    model: AdaptedModel,
    directory: str | Path,
    names: Sequence[str] | None = None,
    lineage: dict[str, Any] | None = None,
) -> Path:
    """Write adapters (default: all) in the PEFT layout; returns ``directory``."""
    directory = Path(directory)
    chosen = list(model.adapter_names if names is None else names)
    model._check_known(chosen)
    for name in chosen:
        out = adapter_dir(directory, name)
        config = model.configs[name]
        body = config.to_peft_dict(model.model, model.paths[name])
        body.update(base_model_name_or_path=base_model_id(model.model), task_type=task_type(model.model),
                    inference_mode=True, revision=None)
        inputs = model.input_state_keys(name)  # prompt-learning tensors carry no module prefix in PEFT
        tensors = {(key if key in inputs else PREFIX + key): value
                   for key, value in model.adapter_state_dict(name).items()}
        write_tensors(out / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
        write_json(out / LINEAGE_NAME, _lineage(model, name, lineage))
        write_json(out / CONFIG_NAME, body)  # last: a folder with a config is a complete adapter
        log.info("saved adapter %r (%d tensors) to %s", name, len(tensors), out)
    return directory


def _lineage(model: AdaptedModel, name: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "format_version": 1,
        "library": "slimtune",
        "library_version": __version__,
        "git_hash": git_hash(),
        "adapter_name": name,
        "method": spec_for_config(model.configs[name]).peft_type,
        "base_model": base_model_id(model.model),
        "base_fingerprint": model.base_fingerprint,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    record.update(extra or {})
    return record


def load_adapter(
    model: nn.Module,
    source: str | Path,
    name: str | None = None,
    *,
    trainable: bool = False,
    activate: bool = True,
    check_fingerprint: bool = True,
) -> AdaptedModel:
    """Load an adapter folder written by slimtune or by PEFT onto ``model`` (a plain or adapted model).

    ``check_fingerprint=False`` loads onto a base whose weights differ from the recorded ones, on purpose.
    """
    directory = _resolve_source(source)
    config_data = _read_config(directory)
    spec = spec_for_peft_type(config_data.get("peft_type"))
    config = spec.config_cls.from_peft_dict(config_data)
    state = _strip_prefix(read_tensors(_weights_path(directory)))
    lineage = read_json(directory / LINEAGE_NAME) if (directory / LINEAGE_NAME).is_file() else {}
    name = name or "default"

    adapted, flags = _wrap(model)
    try:
        _check_fingerprint(adapted, lineage, directory, check_fingerprint)
        adapted.add_adapter(name, config, trainable=trainable)
    except Exception:
        _unwrap(model, adapted, flags)
        raise
    try:
        adapted.load_adapter_state(name, _drop_saved_base_weights(adapted, state))
    except Exception:
        adapted.delete_adapter(name)
        _unwrap(model, adapted, flags)
        raise
    if activate:
        adapted.set_active(name)
    log.info("loaded adapter %r from %s", name, directory)
    return adapted


#: scheme -> resolver of "scheme://..." to a verified local adapter folder; higher layers register themselves
#: (the registry registers "registry"), so this layer never imports them
URI_RESOLVERS: dict[str, Callable[[str], Path]] = {}


def register_uri_scheme(scheme: str, resolver: Callable[[str], Path]) -> None:
    URI_RESOLVERS[scheme] = resolver


def _resolve_source(source: str | Path) -> Path:
    text = str(source)
    scheme, sep, _ = text.partition("://")
    if sep:
        if scheme not in URI_RESOLVERS:
            raise LoadError(f"no loader for {scheme}:// adapters; known schemes: {sorted(URI_RESOLVERS) or 'none'}")
        return URI_RESOLVERS[scheme](text)
    directory = Path(source)
    if directory.is_file():
        if directory.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeFormatError(f"{directory} is a pickle file; slimtune loads safetensors adapters only")
        raise LoadError(f"{directory} is a file; give the adapter folder that holds {CONFIG_NAME}")
    if not directory.is_dir():
        raise LoadError(f"adapter folder {directory} does not exist")
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        subs = sorted(p.parent.name for p in directory.glob(f"*/{CONFIG_NAME}"))
        hint = f"; it holds adapters in sub-folders {subs}: pass one of them" if subs else ""
        raise LoadError(f"{directory} has no {CONFIG_NAME}, so it is not an adapter folder{hint}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise LoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _weights_path(directory: Path) -> Path:
    path = directory / WEIGHTS_NAME
    if path.is_file():
        return path
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeFormatError(
            f"{directory} has only pickle weights ({', '.join(pickles)}); slimtune never unpickles files. "
            "Re-save the adapter with safe_serialization=True (PEFT) or convert it to safetensors"
        )
    raise LoadError(f"{directory} has no {WEIGHTS_NAME}")


# key spellings that other PEFT versions wrote for the same tensor
_KEY_ALIASES = ((".lora_magnitude_vector.weight", ".lora_magnitude_vector"),)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix(PREFIX)
        for old, new in _KEY_ALIASES:
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def _drop_saved_base_weights(adapted: AdaptedModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT saves a targeted embedding's full base weight beside its LoRA (save_embedding_layers). It is
    dropped when it equals this base's weight; a different one (a resized, trained vocabulary) is refused."""
    base = {k.replace(".base_layer", ""): v for k, v in adapted.model.state_dict().items()}
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.endswith(".base_layer.weight"):
            kept[key] = value
            continue
        own = base.get(key.replace(".base_layer", ""))
        if own is None or own.shape != value.shape or not torch.equal(own.to(value.dtype).cpu(), value):
            raise KeyMismatchError(
                f"the adapter file carries a full base weight {key} that differs from this model's; trained "
                "or resized embeddings are not supported: load onto the base the adapter was saved with"
            )
    return kept


def _check_fingerprint(adapted: AdaptedModel, lineage: dict[str, Any], directory: Path, check: bool) -> None:
    recorded = lineage.get("base_fingerprint")
    if not recorded:
        log.info("%s records no base fingerprint (not written by slimtune); base not verified", directory)
        return
    if recorded != adapted.base_fingerprint:
        message = (
            f"adapter {directory} was trained on base {lineage.get('base_model')!r} with fingerprint "
            f"{str(recorded)[:16]}..., but this model's is {adapted.base_fingerprint[:16]}...; load the "
            "matching base, or pass check_fingerprint=False to load onto this one on purpose"
        )
        if check:
            raise FingerprintMismatchError(message)
        log.warning("%s", message)


def _wrap(model: nn.Module) -> tuple[AdaptedModel, list[bool] | None]:
    if isinstance(model, AdaptedModel):
        return model, None
    flags = [p.requires_grad for p in model.parameters()]
    return AdaptedModel(model), flags


def _unwrap(model: nn.Module, adapted: AdaptedModel, flags: list[bool] | None) -> None:
    if flags is not None:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
