"""Tampering and damage: refused at materialize, reported by verify; gc never touches live versions."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from registry_helpers import make_adapter

from slimtune.errors import IntegrityError, LoadError
from slimtune.registry import Registry, render_verify


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "reg", actor="dave")
    registry.add(make_adapter(tmp_path / "a1", 1), "chat")
    registry.add(make_adapter(tmp_path / "a2", 2), "chat")
    yield registry
    registry.close()


def weights_blob(reg: Registry, ref: str) -> Path:
    sha = next(f.sha256 for f in reg.show(ref).files if f.relpath == "adapter_model.safetensors")
    return reg.blobs.path(sha)


def flip_byte(path: Path, offset: int = -10) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_blob_is_refused_at_materialize_and_reported_by_verify(reg: Registry, tmp_path: Path) -> None:
    assert reg.verify().ok
    blob = weights_blob(reg, "chat:1")
    flip_byte(blob)
    with pytest.raises(IntegrityError, match="tampered or corrupt") as info:
        reg.materialize("chat:1")
    assert isinstance(info.value, LoadError) and blob.name in str(info.value)
    with pytest.raises(IntegrityError):
        reg.materialize("chat:1", dest=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    report = reg.verify()
    assert not report.ok and [p.sha256 for p in report.corrupt] == [blob.name]
    assert report.corrupt[0].used_by == ("chat:1/adapter_model.safetensors",)
    assert "FAILED" in render_verify(report) and "chat:1/adapter_model.safetensors" in render_verify(report)
    assert reg.materialize("chat:2").is_dir()  # the other version is unaffected


def test_missing_blob_is_refused_and_reported(reg: Registry) -> None:
    blob = weights_blob(reg, "chat:2")
    blob.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        reg.materialize("chat:2")
    report = reg.verify()
    assert [p.sha256 for p in report.missing] == [blob.name] and not report.corrupt


def test_tampered_or_extended_cache_is_rebuilt_from_verified_blobs(reg: Registry, tmp_path: Path) -> None:
    out = reg.materialize("chat:1")
    good = (out / "adapter_model.safetensors").read_bytes()
    flip_byte(out / "adapter_model.safetensors")
    assert reg.materialize("chat:1") == out
    assert (out / "adapter_model.safetensors").read_bytes() == good
    (out / "adapter_model.bin").write_bytes(b"planted")
    reg.materialize("chat:1")
    assert not (out / "adapter_model.bin").exists()


def test_manifest_altered_in_the_database_is_refused(reg: Registry) -> None:
    conn = sqlite3.connect(reg.root / "registry.db")
    conn.execute("DROP TRIGGER versions_immutable")
    conn.execute("UPDATE versions SET manifest = replace(manifest, 'tiny-llama', 'evil-llama') WHERE version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(IntegrityError, match="altered"):
        reg.materialize("chat:1")
    report = reg.verify()
    assert len(report.bad_signatures) == 1 and "chat:1" in report.bad_signatures[0]


def test_audit_chain_detects_edits_and_removals(reg: Registry) -> None:
    reg.set_alias("chat:1", "production", reason="first")
    reg.set_alias("chat:2", "production", reason="second")
    assert reg.verify_audit() == []
    conn = sqlite3.connect(reg.root / "registry.db")
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE seq = 3")
    conn.commit()
    problems = reg.verify_audit()
    assert len(problems) == 1 and "row 3" in problems[0]
    conn.execute("DELETE FROM audit WHERE seq = 2")
    conn.commit()
    conn.close()
    assert any("row 2 is missing" in p for p in reg.verify_audit())
    assert not reg.verify().ok


def test_gc_removes_only_blobs_no_live_version_uses(reg: Registry, tmp_path: Path) -> None:
    v1_files = {f.sha256 for f in reg.show("chat:1").files}
    v2_files = {f.sha256 for f in reg.show("chat:2").files}
    shared = v1_files & v2_files
    assert shared  # adapter_config.json is identical
    reg.materialize("chat:1")
    reg.set_alias("chat:2", "production")
    reg.delete("chat:1")
    dry = reg.gc(dry_run=True)
    assert set(dry.removed) == v1_files - v2_files and all(reg.blobs.path(s).exists() for s in dry.removed)
    report = reg.gc()
    assert set(report.removed) == v1_files - v2_files and report.freed_bytes > 0
    assert set(reg.blobs.all_digests()) == v2_files
    assert not (reg.root / "cache" / "chat").exists() or not any((reg.root / "cache" / "chat").iterdir())
    assert reg.verify().ok and reg.materialize("chat@production").is_dir()
    assert reg.audit_log()[-1].action == "gc"
