"""AdaptedModel: a base model with named adapters injected by module replacement (the base is not copied).

It keeps which adapters exist, which are active, trainable and merged, and passes ``forward`` straight
through to the base model; the per-method work happens inside the AdapterLayer modules it placed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.core.fingerprint import fingerprint_tensors
from slimtune.core.layer import AdapterLayer, InputAdapter
from slimtune.core.plugin import AdapterConfig, spec_for_config
from slimtune.core.report import ParameterReport, build_report
from slimtune.core.state import check_keys
from slimtune.core.targets import replace_module
from slimtune.errors import AdapterNameError, AdapterStateError, ConfigError, MergeError

log = logging.getLogger(__name__)


def canonical_path(path: str) -> str:
    """The module path as the base model names it (our wrappers insert ``.base_layer``)."""
    return path.replace(".base_layer", "")


class AdaptedModel(nn.Module):
    """A base model plus named adapters; see ``slimtune.adapt``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if isinstance(model, AdaptedModel):
            raise ConfigError("this model is already an AdaptedModel; call add_adapter() on it instead")
        self.model = model
        self.input_adapters = nn.ModuleDict()  # prompt / prefix style adapters, by name
        self.configs: dict[str, AdapterConfig] = {}
        self.paths: dict[str, list[str]] = {}
        self._active: tuple[str, ...] = ()
        self._unloaded = False
        self._inputs_disabled = False
        for p in model.parameters():
            p.requires_grad_(False)
        self._fingerprint = fingerprint_tensors(model.state_dict().items())

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    # ----- adapters -------------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.configs)

    @property
    def active_adapters(self) -> tuple[str, ...]:
        return self._active

    @property
    def merged_adapters(self) -> list[str]:
        merged: list[str] = []
        for _, layer in self.adapter_layers():
            merged += [m for m in layer.merged if m not in merged]
        return merged

    @property
    def base_fingerprint(self) -> str:
        return self._fingerprint

    def adapter_layers(self, name: str | None = None) -> list[tuple[str, AdapterLayer]]:
        """(path, layer) of every adapter layer, or of those holding adapter ``name``."""
        return [(p, m) for p, m in _adapter_layers(self.model)
                if name is None or name in m.adapter_names()]

    def add_adapter(self, name: str, config: AdapterConfig, *, trainable: bool = True) -> None:
        """Inject a new adapter; it is trainable (unless told otherwise) but not active until set_active."""
        self._check_usable()
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            raise ConfigError(f"adapter name must be a non-empty string without '.' or '/', got {name!r}")
        if name in self.configs:
            raise AdapterNameError(f"an adapter named {name!r} exists already; delete_adapter({name!r}) first")
        if self.merged_adapters:
            raise AdapterStateError("adapters are merged; unmerge() before adding another")
        spec = spec_for_config(config)
        paths = spec.plan(self.model, config)  # raises before anything is touched
        try:
            if spec.build_input is not None:
                self.input_adapters[name] = spec.build_input(self.model, config)
            spec.inject(self.model, config, name, paths)
        except Exception:
            self._remove_from_layers(name)
            if name in self.input_adapters:
                del self.input_adapters[name]
            raise
        self.configs[name] = config
        self.paths[name] = paths
        self._sync_active()
        for _, layer in self.adapter_layers(name):
            layer.train(layer.base_layer.training)  # new modules start in training mode; follow the base
        if name in self.input_adapters:
            self.input_adapters[name].train(self.model.training)
        for p in self._params_of(name):
            p.requires_grad_(trainable)
        log.info("added adapter %r (%s) to %d modules", name, type(config).__name__, len(paths))

    def delete_adapter(self, name: str) -> None:
        self._check_known([name])
        if name in self.merged_adapters:
            raise AdapterStateError(f"adapter {name!r} is merged; unmerge() before deleting it")
        self._remove_from_layers(name)
        if name in self.input_adapters:
            del self.input_adapters[name]
        del self.configs[name]
        del self.paths[name]
        self._active = tuple(a for a in self._active if a != name)
        self._sync_active()

    def _remove_from_layers(self, name: str) -> None:
        # deepest first, so that unwrapping an inner layer happens before its outer one is looked at
        for path, layer in reversed(self.adapter_layers()):
            if name in layer.adapter_names():
                layer.remove(name)
            if not layer.adapter_names():
                replace_module(self.model, path, layer.base_layer)

    def set_active(self, names: str | Sequence[str]) -> None:
        """Make these adapters the active set; several active adapters add their deltas."""
        chosen = (names,) if isinstance(names, str) else tuple(names)
        self._check_known(chosen)
        if self.merged_adapters:
            raise AdapterStateError("adapters are merged; unmerge() before changing the active set")
        self._active = tuple(dict.fromkeys(chosen))
        self._sync_active()

    def _sync_active(self) -> None:
        for _, layer in self.adapter_layers():
            own = layer.adapter_names()
            layer.active = tuple(a for a in self._active if a in own)

    def set_trainable(self, names: str | Sequence[str]) -> None:
        """Only these adapters' parameters will receive gradients; the base always stays frozen."""
        chosen = {names} if isinstance(names, str) else set(names)
        self._check_known(chosen)
        for n in self.configs:
            for p in self._params_of(n):
                p.requires_grad_(n in chosen)

    def _params_of(self, name: str) -> list[torch.Tensor]:
        params = [p for _, layer in self.adapter_layers(name) for p in layer.adapter_parameters(name).values()]
        if name in self.input_adapters:
            params += list(self._input(name).adapter_parameters().values())
        return params

    def _input(self, name: str) -> InputAdapter:
        module = self.input_adapters[name]
        assert isinstance(module, InputAdapter)  # only InputAdapters are put there
        return module

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_report(self) -> ParameterReport:
        return build_report(self)  # self, not self.model: prompt/prefix adapters live beside the model

    def _check_known(self, names: Sequence[str] | set[str]) -> None:
        self._check_usable()
        unknown = [n for n in names if n not in self.configs]
        if unknown:
            raise AdapterNameError(f"unknown adapter(s) {unknown}; this model has {self.adapter_names}")

    def _check_usable(self) -> None:
        if self._unloaded:
            raise AdapterStateError("merge_and_unload() consumed this AdaptedModel; use the model it returned")

    # ----- forward ---------------------------------------------------------------------------------
    def forward(self, *args: Any, adapter_names: Sequence[str | None] | None = None, **kwargs: Any) -> Any:
        with self._rows(adapter_names):
            inputs = self._active_input()
            if inputs is not None:
                args, kwargs = inputs.prepare(self.model, args, kwargs)
            return self.model(*args, **kwargs)

    def model_inputs(self, **kwargs: Any) -> dict[str, Any]:
        """The keyword arguments the wrapped model's forward gets for a call ``self(**kwargs)``: the active
        prompt / prefix adapter's inputs put in (virtual tokens in front of ``inputs_embeds`` with -100 labels
        for them, a prefix in the cache, the attention mask extended), else ``kwargs`` as given."""
        inputs = self._active_input()
        return dict(kwargs) if inputs is None else inputs.prepare(self.model, (), kwargs)[1]

    def generate(self, *args: Any, adapter_names: Sequence[str | None] | None = None, **kwargs: Any) -> Any:
        with self._rows(adapter_names):
            inputs = self._active_input()
            if inputs is not None:
                args, kwargs = inputs.prepare_generation(self.model, args, kwargs)
            return self.model.generate(*args, **kwargs)  # type: ignore[operator]

    def _active_input(self) -> InputAdapter | None:
        if self._inputs_disabled:
            return None
        names = [n for n in self._active if n in self.input_adapters]
        if len(names) > 1:
            raise AdapterStateError(f"only one prompt/prefix adapter can be active at a time, got {names}")
        return self._input(names[0]) if names else None

    @contextlib.contextmanager
    def _rows(self, adapter_names: Sequence[str | None] | None) -> Iterator[None]:
        if adapter_names is None:
            yield
            return
        rows = list(adapter_names)
        self._check_known({n for n in rows if n is not None})
        if any(n in self.input_adapters for n in rows if n is not None):
            raise AdapterStateError("mixed-adapter batches cannot hold prompt/prefix adapters; batch them apart")
        layers = [layer for _, layer in self.adapter_layers()]
        if any(layer.merged for layer in layers):
            raise AdapterStateError("mixed-adapter batches need unmerged adapters; call unmerge() first")
        for layer in layers:
            layer.row_adapters = rows
        try:
            yield
        finally:
            for layer in layers:
                layer.row_adapters = None

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Within this block the model computes exactly what the base model computes."""
        if self.merged_adapters:
            raise AdapterStateError("adapters are merged into the base weights; unmerge() before disabled()")
        layers = [layer for _, layer in self.adapter_layers()]
        for layer in layers:
            layer.disabled = True
        self._inputs_disabled = True
        try:
            yield
        finally:
            self._inputs_disabled = False
            for layer in layers:
                layer.disabled = False

    # ----- merging ---------------------------------------------------------------------------------
    def merge(self, names: Sequence[str] | None = None) -> None:
        """Fold adapters (default: the active ones) into the base weights; merging twice is a no-op."""
        chosen = list(self._active if names is None else names)
        self._check_known(chosen)
        unmergeable = [n for n in chosen if n in self.input_adapters]
        if unmergeable:
            raise MergeError(f"adapter(s) {unmergeable} act on the inputs (prompt/prefix) and cannot be merged")
        todo = [(path, layer, n) for n in chosen for path, layer in self.adapter_layers(n) if n not in layer.merged]
        for path, layer, n in todo:
            if not layer.mergeable:
                raise MergeError(f"adapter {n!r} ({type(layer).__name__} at {path}) cannot be merged")
            self._check_untied(path, layer)
            layer.check_merge(n)  # every check passes before any weight changes
        for _, layer, n in todo:
            layer.merge(n)

    def unmerge(self) -> None:
        """Take merged adapters back out of the base weights; a no-op when nothing is merged."""
        self._check_usable()
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def _check_untied(self, path: str, layer: AdapterLayer) -> None:
        own = {id(t) for t in layer.base_tensors().values()}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            if id(param) in own and not canonical_path(name).startswith(canonical_path(path) + "."):
                raise MergeError(
                    f"{canonical_path(path)} shares its weight with {canonical_path(name)} (tied embeddings); "
                    "merging would change both. Untie them first (clone the weight), or keep the adapter unmerged"
                )

    def merge_and_unload(self, names: Sequence[str] | None = None) -> nn.Module:
        """Merge (default: the active adapters), remove every slimtune layer, return the plain base model."""
        self.merge(names)
        for path, layer in reversed(self.adapter_layers()):
            replace_module(self.model, path, layer.base_layer)
        self._unloaded = True
        return self.model

    # ----- state -----------------------------------------------------------------------------------
    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """One adapter's tensors with PEFT's keys relative to the base model (no ``base_model.model.``)."""
        self._check_known([name])
        state: dict[str, torch.Tensor] = {}
        for path, layer in self.adapter_layers(name):
            for key, value in layer.export_state(name).items():
                state[f"{canonical_path(path)}.{key}"] = value
        if name in self.input_adapters:
            state.update(self._input(name).export_state())
        return state

    def input_state_keys(self, name: str) -> set[str]:
        """Keys of adapter ``name`` that belong to the inputs, not to a module (saved without a prefix)."""
        return set(self._input(name).expected_shapes()) if name in self.input_adapters else set()

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Copy tensors into adapter ``name``; the key sets and shapes must match exactly, or nothing changes."""
        self._check_known([name])
        expected: dict[str, tuple[AdapterLayer, str, tuple[int, ...]]] = {}
        for path, layer in self.adapter_layers(name):
            for key, shape in layer.expected_shapes(name).items():
                expected[f"{canonical_path(path)}.{key}"] = (layer, key, shape)
        shapes = {k: v[2] for k, v in expected.items()}
        if name in self.input_adapters:
            shapes.update(self._input(name).expected_shapes())
        check_keys(shapes, state)
        per_layer: dict[int, tuple[AdapterLayer, dict[str, torch.Tensor]]] = {}
        for full, (layer, key, _) in expected.items():
            per_layer.setdefault(id(layer), (layer, {}))[1][key] = state[full]
        for layer, part in per_layer.values():
            layer.import_state(name, part)
        if name in self.input_adapters:
            self._input(name).import_state({k: state[k] for k in self.input_state_keys(name)})

    def save_adapter(self, directory: str | Path, names: Sequence[str] | None = None) -> Path:
        from slimtune.formats.peft import save_adapter

        return save_adapter(self, directory, names)


def _adapter_layers(root: nn.Module) -> list[tuple[str, AdapterLayer]]:
    """(path, layer) of every AdapterLayer under ``root`` in ``named_modules`` order, without entering the
    children that hold only a layer's own adapter tensors (``own_children``): with many adapters those are
    most of the module tree, and a mixed-adapter forward walks it twice."""
    found: list[tuple[str, AdapterLayer]] = []
    seen: set[int] = set()
    todo: list[tuple[str, nn.Module]] = [("", root)]
    while todo:
        path, module = todo.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        skip: frozenset[str] = frozenset()
        if isinstance(module, AdapterLayer):
            found.append((path, module))
            skip = module.own_children
        children = [(f"{path}.{n}" if path else n, c) for n, c in module._modules.items()
                    if c is not None and n not in skip]
        todo.extend(reversed(children))
    return found


def adapt(model: nn.Module, config: AdapterConfig | Sequence[AdapterConfig], name: str = "default") -> AdaptedModel:
    """Inject adapter ``name`` into ``model`` (in place, no copy), make it active and trainable.

    A list of configs combines methods (e.g. LoRA on attention plus BitFit): the first is adapter ``name``,
    the others ``name_<peft type>`` (e.g. ``default_bitfit``); all are active and trainable together.
    """
    configs: list[AdapterConfig] = list(config) if isinstance(config, list | tuple) else [config]  # type: ignore[list-item]
    if not configs:
        raise ConfigError("adapt() got an empty list of configs")
    names = _combination_names(name, configs)
    flags = None if isinstance(model, AdaptedModel) else [p.requires_grad for p in model.parameters()]
    adapted = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    done: list[str] = []
    try:
        for adapter_name, cfg in zip(names, configs, strict=True):
            adapted.add_adapter(adapter_name, cfg, trainable=True)
            done.append(adapter_name)
    except Exception:
        for adapter_name in reversed(done):  # leave the caller's model as it was
            adapted.delete_adapter(adapter_name)
        if flags is not None:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
        raise
    adapted.set_active((*adapted.active_adapters, *names) if adapted is model else names)
    return adapted


def _combination_names(name: str, configs: list[AdapterConfig]) -> list[str]:
    names = [name]
    for cfg in configs[1:]:
        candidate = f"{name}_{cfg.peft_type.lower()}"
        while candidate in names:
            candidate += "_"
        names.append(candidate)
    return names
