"""add / show / list / history / diff / materialize on one process: the happy paths and the refusals."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from registry_helpers import BASE_FP, make_adapter, make_run

from slimtune.errors import CorruptFileError, RegistryError, UnsafeFormatError
from slimtune.registry import Registry, render_diff, render_history, render_version, render_versions


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "reg", actor="alice")
    yield registry
    registry.close()


def test_add_adapter_folder_records_lineage_and_files(reg: Registry, tmp_path: Path) -> None:
    src = make_adapter(tmp_path / "a", 1, metrics={"eval": {"accuracy": 0.8}}, scans={"pii": {"status": "passed"}})
    ref = reg.add(src, "chat")
    assert str(ref) == "chat:1"
    rec = reg.show("chat")
    assert rec.base_model == "tiny-llama" and rec.base_fingerprint == BASE_FP
    assert rec.metrics == {"eval": {"accuracy": 0.8}}
    assert rec.manifest["scans"] == {"pii": {"status": "passed"}}
    assert rec.manifest["adapter_config"]["peft_type"] == "LORA"
    assert rec.manifest["recipe"]["lr"] == pytest.approx(1e-3)
    assert rec.manifest["datasets"][0]["name"] == "chat-train"
    assert rec.created_by == "alice" and not rec.deleted
    assert sorted(f.relpath for f in rec.files) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "slimtune.json",
    ]
    out = reg.materialize("chat:1")
    for f in rec.files:
        assert (out / f.relpath).read_bytes() == (src / f.relpath).read_bytes()


def test_add_run_folder_reads_eval_json_and_arguments_override(reg: Registry, tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "run",
        2,
        eval_metrics={"metrics": {"eval": {"accuracy": 0.7, "loss": 1.5}, "ood": {"accuracy": {"mean": 0.6}}}},
        metrics={"eval": {"accuracy": 0.5, "f1": 0.4}},
    )
    reg.add(run, "chat", metrics={"eval": {"loss": 1.2}}, scans={"licence": "passed"})
    rec = reg.show("chat:1")
    # slimtune.json < eval.json < argument
    assert rec.metrics == {"eval": {"accuracy": 0.7, "f1": 0.4, "loss": 1.2}, "ood": {"accuracy": 0.6}}
    assert rec.manifest["scans"] == {"licence": "passed"}
    assert rec.manifest["source"].endswith("run/adapter")


def test_versions_are_dense_and_identical_content_is_stored_once(reg: Registry, tmp_path: Path) -> None:
    src = make_adapter(tmp_path / "a", 3)
    refs = [reg.add(src, "chat") for _ in range(3)] + [reg.add(src, "other")]
    assert [str(r) for r in refs] == ["chat:1", "chat:2", "chat:3", "other:1"]
    assert len(list(reg.blobs.all_digests())) == 4  # four files, stored once for four versions
    assert [str(r.ref) for r in reg.list()] == ["chat:1", "chat:2", "chat:3", "other:1"]
    assert [str(r.ref) for r in reg.list("other")] == ["other:1"]


def test_pickles_are_refused_and_nothing_is_stored(reg: Registry, tmp_path: Path) -> None:
    src = make_adapter(tmp_path / "a", 4)
    (src / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeFormatError, match=r"adapter_model\.bin"):
        reg.add(src, "chat")
    assert reg.names() == [] and list(reg.blobs.all_digests()) == []


def test_truncated_safetensors_is_refused(reg: Registry, tmp_path: Path) -> None:
    src = make_adapter(tmp_path / "a", 5)
    data = (src / "adapter_model.safetensors").read_bytes()
    (src / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        reg.add(src, "chat")


@pytest.mark.parametrize("name", ["", "a:b", "a@b", "a/b", "-x", "x" * 200])
def test_bad_names_are_refused(reg: Registry, tmp_path: Path, name: str) -> None:
    with pytest.raises(RegistryError, match="invalid"):
        reg.add(make_adapter(tmp_path / "a", 6), name)


def test_folder_without_adapter_is_refused(reg: Registry, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="neither an adapter folder"):
        reg.add(tmp_path / "empty", "chat")


def test_unknown_names_and_versions_give_clear_errors(reg: Registry, tmp_path: Path) -> None:
    reg.add(make_adapter(tmp_path / "a", 7), "chat")
    with pytest.raises(RegistryError, match="did you mean chat"):
        reg.show("chta")
    with pytest.raises(RegistryError, match="versions 1 to 1"):
        reg.show("chat:9")
    with pytest.raises(RegistryError, match="no alias 'production'"):
        reg.show("chat@production")


def test_versions_are_immutable_in_the_database(reg: Registry, tmp_path: Path) -> None:
    reg.add(make_adapter(tmp_path / "a", 8), "chat")
    conn = sqlite3.connect(reg.root / "registry.db")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("UPDATE versions SET manifest = '{}' WHERE name = 'chat'")
    with pytest.raises(sqlite3.IntegrityError, match="never removed"):
        conn.execute("DELETE FROM versions")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    conn.close()


def test_delete_is_soft_and_refused_while_aliased(reg: Registry, tmp_path: Path) -> None:
    reg.add(make_adapter(tmp_path / "a", 9), "chat")
    reg.add(make_adapter(tmp_path / "b", 10), "chat")
    reg.set_alias("chat:2", "production")
    with pytest.raises(RegistryError, match="production"):
        reg.delete("chat:2")
    assert reg.delete("chat:1", reason="bad data").version == 1
    assert [r.version for r in reg.list("chat")] == [2]
    assert reg.show("chat:1").deleted and reg.show("chat:1").deleted_by == "alice"
    with pytest.raises(RegistryError, match="already deleted"):
        reg.delete("chat:1")
    with pytest.raises(RegistryError, match="deleted"):
        reg.materialize("chat:1")
    with pytest.raises(RegistryError, match="deleted"):
        reg.set_alias("chat:1", "staging")
    assert reg.audit_log("chat")[-1].action == "delete" and reg.audit_log("chat")[-1].reason == "bad data"


def test_history_diff_and_renderings(reg: Registry, tmp_path: Path) -> None:
    reg.add(make_adapter(tmp_path / "a", 11, metrics={"eval": {"accuracy": 0.7, "loss": 1.0}}), "chat")
    reg.add(make_adapter(tmp_path / "b", 12, r=8, metrics={"eval": {"accuracy": 0.75, "loss": 0.8}}), "chat")
    reg.promote("chat:1", to="production")
    reg.promote("chat:2", to="production")
    h = reg.history("chat")
    assert [v.version for v in h.versions] == [1, 2] and h.aliases == {"production": 2}
    assert [(m.old_version, m.new_version, m.action) for m in h.alias_moves] == [
        (None, 1, "promote"),
        (1, 2, "promote"),
    ]
    assert [a.action for a in h.audit] == ["add", "add", "promote", "promote"]
    d = reg.diff("chat:1", "chat@production")
    assert d["config"]["r"] == {"a": 4, "b": 8, "changed": True}
    assert d["config"]["peft_type"]["changed"] is False
    assert d["metrics"]["eval/accuracy"]["delta"] == pytest.approx(0.05)
    assert d["metrics"]["eval/loss"]["lower_is_better"] is True
    assert d["files"]["adapter_model.safetensors"]["changed"] is True
    json.dumps(d)  # JSON-ready for --json output
    text = render_diff(d)
    assert "| r | 4 | 8 | * |" in text and "eval/accuracy" in text
    assert "production" in render_versions(reg.list()) and "chat:2" in render_version(reg.show("chat:2"))
    assert "promote" in render_history(h)
