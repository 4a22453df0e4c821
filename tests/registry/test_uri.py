"""``resolve_uri``: the loader's entry point, root from the argument or $SLIMTUNE_REGISTRY."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_helpers import BASE_FP, make_adapter

from slimtune.errors import IntegrityError, RegistryError
from slimtune.registry import ENV_KEY_FILE, ENV_ROOT, Registry, resolve_uri


@pytest.fixture
def root(tmp_path: Path) -> Path:
    with Registry(tmp_path / "reg") as reg:
        reg.add(make_adapter(tmp_path / "a", 1), "chat")
        reg.add(make_adapter(tmp_path / "b", 2), "chat")
        reg.set_alias("chat:1", "production")
    return tmp_path / "reg"


def test_resolve_with_explicit_root_and_env(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, manifest = resolve_uri("registry://chat@production", root=root)
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    assert manifest["version"] == 1 and manifest["base_fingerprint"] == BASE_FP
    monkeypatch.setenv(ENV_ROOT, str(root))
    folder2, manifest2 = resolve_uri("registry://chat")
    assert manifest2["version"] == 2 and folder2 != folder
    assert resolve_uri("registry://chat:1")[0] == folder


def test_resolve_errors(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ROOT, raising=False)
    with pytest.raises(RegistryError, match=ENV_ROOT):
        resolve_uri("registry://chat@production")
    with pytest.raises(RegistryError, match="not a slimtune registry"):
        resolve_uri("registry://chat@production", root=tmp_path / "nowhere")
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        resolve_uri("registry://chat@staging", root=root)
    with pytest.raises(RegistryError, match="not a registry URI"):
        resolve_uri("chat@production", root=root)


def test_resolve_checks_signatures_from_the_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Registry(tmp_path / "reg") as reg:  # unsigned
        reg.add(make_adapter(tmp_path / "a", 1), "chat")
    (tmp_path / "key").write_bytes(b"s" * 32)
    monkeypatch.setenv(ENV_KEY_FILE, str(tmp_path / "key"))
    with pytest.raises(IntegrityError, match="unsigned"):
        resolve_uri("registry://chat", root=tmp_path / "reg")
