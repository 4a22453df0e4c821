"""``registry://`` URIs for loaders: ``resolve_uri("registry://NAME@production")`` -> folder + manifest.

The URI names a model and a version or alias, never the registry's location: the root comes from the
``root`` argument, else the ``SLIMTUNE_REGISTRY`` environment variable. A signing key, if any, comes from the
``signing_key`` argument, else the file named by ``SLIMTUNE_REGISTRY_KEY_FILE`` (PEM: ed25519, else HMAC
secret). The caller (``slimtune.load_adapter``) compares the manifest's ``base_fingerprint`` with its model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slimtune.errors import RegistryError
from slimtune.registry.refs import parse_uri
from slimtune.registry.signing import ManifestKey, load_key_file
from slimtune.registry.store import Registry

ENV_ROOT = "SLIMTUNE_REGISTRY"
ENV_KEY_FILE = "SLIMTUNE_REGISTRY_KEY_FILE"


def registry_root(root: Path | str | None = None) -> Path:
    """The registry root: the argument, else $SLIMTUNE_REGISTRY; RegistryError if neither names a registry."""
    chosen = root if root is not None else os.environ.get(ENV_ROOT)
    if not chosen:
        raise RegistryError(f"no registry given: pass root= or set {ENV_ROOT}=/path/to/registry")
    path = Path(chosen)
    if not (path / "registry.db").is_file():
        raise RegistryError(
            f"{path} is not a slimtune registry (no registry.db); create one with `slimtune registry add`"
        )
    return path


def default_key(signing_key: bytes | ManifestKey | None = None) -> bytes | ManifestKey | None:
    """The argument, else the key in $SLIMTUNE_REGISTRY_KEY_FILE, else None."""
    if signing_key is not None:
        return signing_key
    key_file = os.environ.get(ENV_KEY_FILE)
    return load_key_file(Path(key_file)) if key_file else None


def open_registry(
    root: Path | str | None = None, signing_key: bytes | ManifestKey | None = None, actor: str | None = None
) -> Registry:
    """Open an existing registry from root or $SLIMTUNE_REGISTRY (key from the environment too)."""
    return Registry(registry_root(root), signing_key=default_key(signing_key), actor=actor)


def resolve_uri(
    uri: str, root: Path | str | None = None, signing_key: bytes | ManifestKey | None = None
) -> tuple[Path, dict[str, Any]]:
    """A verified local adapter folder for ``registry://NAME[:VERSION|@ALIAS]`` and its manifest.

    Raises RegistryError (bad URI, unknown name/alias, no registry), IntegrityError (tampered blob or
    manifest, bad signature). The manifest is the version's registry manifest (base_model,
    base_fingerprint, metrics, scans, adapter_config, lineage, files, name, version).
    """
    spec = parse_uri(uri)
    with open_registry(root, signing_key) as reg:
        path, rec = reg.checkout(spec)
    return path, dict(rec.manifest)


def _resolve_folder(uri: str) -> Path:
    return Path(resolve_uri(uri)[0])


def _register_scheme() -> None:
    """Make ``slimtune.load_adapter(model, "registry://NAME@alias")`` resolve through this registry."""
    from slimtune.formats.peft import register_uri_scheme

    register_uri_scheme("registry", _resolve_folder)


_register_scheme()
