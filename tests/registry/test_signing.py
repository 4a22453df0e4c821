"""Signed manifests: good signatures verify; an altered manifest, a wrong key or no signature is refused."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from registry_helpers import make_adapter

from slimtune.errors import IntegrityError, RegistryError
from slimtune.registry import Ed25519Key, HmacKey, Registry, load_key_file
from slimtune.registry.audit import canonical_json

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def forge_manifest(root: Path, version: int) -> None:
    """Change a manifest and fix up its hash, as an attacker with database access would; only a signature catches it."""
    conn = sqlite3.connect(root / "registry.db")
    conn.execute("DROP TRIGGER IF EXISTS versions_immutable")
    (text,) = conn.execute("SELECT manifest FROM versions WHERE version = ?", (version,)).fetchone()
    manifest = json.loads(text)
    manifest["metrics"] = {"eval": {"accuracy": 0.99}}
    new = canonical_json(manifest)
    conn.execute(
        "UPDATE versions SET manifest = ?, manifest_sha256 = ? WHERE version = ?",
        (new, hashlib.sha256(new.encode()).hexdigest(), version),
    )
    conn.commit()
    conn.close()


def test_hmac_good_signature_verifies(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg", signing_key=KEY) as reg:
        reg.add(make_adapter(tmp_path / "a", 1), "chat")
        assert reg.show("chat:1").signature.startswith("hmac-sha256:")
        assert reg.materialize("chat:1").is_dir() and reg.verify().ok
        reg.promote("chat:1", to="production")


def test_hmac_tampered_manifest_fails(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg", signing_key=KEY) as reg:
        reg.add(make_adapter(tmp_path / "a", 1), "chat")
        reg.add(make_adapter(tmp_path / "b", 2), "chat")
    forge_manifest(tmp_path / "reg", 2)
    with Registry(tmp_path / "reg") as unkeyed:  # without a key the forgery is invisible: the reason for keys
        assert unkeyed.materialize("chat:2").is_dir()
    with Registry(tmp_path / "reg", signing_key=KEY) as reg:
        with pytest.raises(IntegrityError, match="does not verify"):
            reg.materialize("chat:2")
        with pytest.raises(IntegrityError, match="does not verify"):
            reg.promote("chat:2", to="production")
        assert reg.materialize("chat:1").is_dir()
        report = reg.verify()
        assert len(report.bad_signatures) == 1 and "chat:2" in report.bad_signatures[0] and not report.ok


def test_wrong_key_fails(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg", signing_key=KEY) as reg:
        reg.add(make_adapter(tmp_path / "a", 1), "chat")
    with Registry(tmp_path / "reg", signing_key=OTHER_KEY) as reg, pytest.raises(IntegrityError, match="verify"):
        reg.materialize("chat:1")


def test_unsigned_version_is_refused_when_a_key_is_configured(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg") as reg:
        reg.add(make_adapter(tmp_path / "a", 1), "chat")
    with Registry(tmp_path / "reg", signing_key=KEY) as reg, pytest.raises(IntegrityError, match="unsigned"):
        reg.materialize("chat:1")


def test_ed25519_private_signs_public_verifies(tmp_path: Path) -> None:
    key = Ed25519Key.generate()
    with Registry(tmp_path / "reg", signing_key=key) as reg:
        reg.add(make_adapter(tmp_path / "a", 1), "chat")
        assert reg.show("chat:1").signature.startswith("ed25519:")
    public = Ed25519Key.from_pem(key.public_pem())
    with Registry(tmp_path / "reg", signing_key=public) as reg:
        assert reg.materialize("chat:1").is_dir() and reg.verify().ok
        with pytest.raises(RegistryError, match="private key"):
            reg.add(make_adapter(tmp_path / "b", 2), "chat")
    stranger = Ed25519Key.generate().public_only()
    with Registry(tmp_path / "reg", signing_key=stranger) as reg, pytest.raises(IntegrityError, match="not verify"):
        reg.materialize("chat:1")
    with Registry(tmp_path / "reg", signing_key=KEY) as reg, pytest.raises(IntegrityError, match="ed25519"):
        reg.materialize("chat:1")
    forge_manifest(tmp_path / "reg", 1)
    with Registry(tmp_path / "reg", signing_key=public) as reg, pytest.raises(IntegrityError):
        reg.materialize("chat:1")


def test_key_files_and_validation(tmp_path: Path) -> None:
    key = Ed25519Key.generate()
    (tmp_path / "ed.pem").write_bytes(key.private_pem())
    (tmp_path / "ed.pub").write_bytes(key.public_pem())
    (tmp_path / "hmac.key").write_bytes(KEY + b"\n")
    assert load_key_file(tmp_path / "ed.pem").can_sign
    assert not load_key_file(tmp_path / "ed.pub").can_sign
    hmac_key = load_key_file(tmp_path / "hmac.key")
    assert isinstance(hmac_key, HmacKey) and hmac_key.sign(b"x") == HmacKey(KEY).sign(b"x")
    with pytest.raises(RegistryError, match="16 bytes"):
        HmacKey(b"short")
    with pytest.raises(RegistryError, match="signing_key"):
        Registry(tmp_path / "reg", signing_key="not bytes")  # type: ignore[arg-type]
