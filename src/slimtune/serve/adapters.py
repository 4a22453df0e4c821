"""Registry-backed adapters for the server: ``model`` names resolved through the registry only (a client
never gives a path), aliases re-read at most every ``alias_ttl_s``, adapters loaded lazily into the one
AdaptedModel under a name per version and kept in an LRU."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from slimtune.core.model import AdaptedModel
from slimtune.errors import LoadError, RegistryError, SlimtuneError
from slimtune.formats.peft import load_adapter
from slimtune.registry import RefSpec, Registry, VersionRef, open_registry, parse_ref
from slimtune.serve.drift import DriftMonitor
from slimtune.serve.errors import AdapterLoadFailed, BadRequest, NotFound
from slimtune.serve.profile import PROFILE_NAME, Profile

log = logging.getLogger(__name__)

_PATHLIKE = re.compile(r"[/\\~]|\.\.|^\.|://|\s")
# (name, alias, old version, new version) when a re-resolution finds an alias moved
AliasMoveHook = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class Resolved:
    """What a ``model`` field names now: a registry version, or the base (``ref`` None)."""

    ref: VersionRef | None
    label: str
    """``NAME:VERSION`` or the base's name: used in metrics, logs and responses."""


class AdapterManager:
    """Resolution and loading. ``resolve`` may be called from any thread; ``ensure_loaded`` from the one thread
    that runs the model."""

    def __init__(self, model: AdaptedModel, registry_root: Path | None, base_names: Iterable[str], base_label: str,
                 *, ttl_s: float = 0.5, cap: int = 16, monitor: DriftMonitor | None = None) -> None:
        self.model = model
        self.root = registry_root
        self.base_names = frozenset(base_names)
        self.base_label = base_label
        self.ttl_s = ttl_s
        self.cap = cap
        self.monitor = monitor
        self.on_alias_move: list[AliasMoveHook] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._resolved: dict[str, tuple[VersionRef, float]] = {}
        self._loaded: OrderedDict[VersionRef, str] = OrderedDict()

    def registry(self) -> Registry:
        """This thread's Registry (a SQLite connection serves one thread)."""
        reg = getattr(self._local, "registry", None)
        if reg is None:
            if self.root is None:
                raise NotFound("this server has no registry; only the base model can be used", param="model")
            reg = self._local.registry = open_registry(self.root)
        return reg

    def parse(self, model_field: object) -> RefSpec | None:
        """The registry reference a ``model`` field names (None: the base); 400 on anything path-like."""
        if not isinstance(model_field, str) or not model_field or len(model_field) > 200:
            raise BadRequest("'model' must be a non-empty string naming the base, NAME, NAME@ALIAS or NAME:VERSION",
                             param="model", code="invalid_model")
        if model_field in self.base_names:
            return None
        if _PATHLIKE.search(model_field):
            raise BadRequest(f"'model' {model_field!r} looks like a path; adapters are named through the registry "
                             "only (NAME, NAME@ALIAS or NAME:VERSION)", param="model", code="invalid_model")
        try:
            return parse_ref(model_field)
        except RegistryError as exc:
            raise BadRequest(str(exc), param="model", code="invalid_model") from exc

    def resolve(self, model_field: object) -> Resolved:
        """Resolve now (cached for ``ttl_s``); 404 if the registry has no such name, version or alias."""
        spec = self.parse(model_field)
        if spec is None:
            return Resolved(None, self.base_label)
        key = str(spec)
        now = time.monotonic()
        with self._lock:
            hit = self._resolved.get(key)
        if hit is not None and now - hit[1] < self.ttl_s:
            return Resolved(hit[0], str(hit[0]))
        try:
            ref = self.registry().resolve(spec)
        except RegistryError as exc:
            raise NotFound(f"model {key!r} is not available: {exc}", param="model", code="model_not_found") from exc
        with self._lock:
            self._resolved[key] = (ref, now)
        if hit is not None and hit[0] != ref and spec.alias is not None:
            log.info("alias %s@%s moved from %s to %s", spec.name, spec.alias, hit[0], ref)
            for hook in self.on_alias_move:
                hook(spec.name, spec.alias, hit[0].version, ref.version)
        return Resolved(ref, str(ref))

    def forget(self, key: str) -> None:
        """Drop a cached resolution (after this server moved the alias itself)."""
        with self._lock:
            self._resolved.pop(key, None)

    def internal_name(self, ref: VersionRef) -> str:
        """The adapter's name inside the model: ``chat-v3`` (dots, which the core refuses, become '_')."""
        return f"{ref.name.replace('.', '_')}-v{ref.version}"

    def loaded(self) -> list[VersionRef]:
        with self._lock:
            return list(self._loaded)

    def ensure_loaded(self, needed: Iterable[VersionRef]) -> dict[VersionRef, str | SlimtuneError]:
        """Load what is missing (LRU order refreshed), evict beyond the cap; per version its name or the error."""
        wanted = list(dict.fromkeys(needed))
        out: dict[VersionRef, str | SlimtuneError] = {}
        for ref in wanted:
            try:
                out[ref] = self._load(ref)
            except Exception as exc:  # any failure fails this adapter's requests only, never the batch
                log.error("adapter %s could not be loaded: %s", ref, exc)
                out[ref] = AdapterLoadFailed(f"adapter {ref} could not be loaded: {exc}", param="model",
                                             code="adapter_load_failed")
        self._evict(keep=set(wanted))
        return out

    def _load(self, ref: VersionRef) -> str:
        with self._lock:
            if ref in self._loaded:
                self._loaded.move_to_end(ref)
                return self._loaded[ref]
        folder, _ = self.registry().checkout(ref)  # verified: IntegrityError on a tampered blob
        name = self.internal_name(ref)
        load_adapter(self.model, folder, name=name, activate=False)
        with self._lock:
            self._loaded[ref] = name
        if self.monitor is not None and (folder / PROFILE_NAME).is_file():
            try:
                self.monitor.set_profile(str(ref), Profile.load(folder / PROFILE_NAME))
            except LoadError as exc:  # serving goes on; drift for this version is simply not tested
                log.warning("adapter %s: reference profile unusable: %s", ref, exc)
        log.info("loaded adapter %s as %r", ref, name)
        return name

    def _evict(self, keep: set[VersionRef]) -> None:
        with self._lock:
            victims = [r for r in self._loaded if r not in keep][: max(0, len(self._loaded) - self.cap)]
            for ref in victims:
                del self._loaded[ref]
        for ref in victims:
            self.model.delete_adapter(self.internal_name(ref))
            log.info("evicted adapter %s (LRU cap %d)", ref, self.cap)

    def is_input_adapter(self, name: str | None) -> bool:
        """Prompt/prefix adapters cannot share a mixed batch; the batcher runs them apart."""
        return name is not None and name in self.model.input_adapters

    def close(self) -> None:
        reg = getattr(self._local, "registry", None)
        if reg is not None:
            reg.close()
            self._local.registry = None
