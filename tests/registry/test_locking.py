"""A database held by another writer gives RegistryLockedError (retriable) and leaves nothing behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from registry_helpers import make_adapter

from slimtune.errors import RegistryError, RegistryLockedError
from slimtune.registry import Registry
from slimtune.registry.blobs import file_lock


def test_locked_database_raises_retriable_error(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg") as reg:
        reg.add(make_adapter(tmp_path / "a", 1), "chat")
    before = set(Registry(tmp_path / "reg").blobs.all_digests())
    holder = sqlite3.connect(tmp_path / "reg" / "registry.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    reg = Registry(tmp_path / "reg", lock_timeout=0.3)  # opening and reading still work (WAL)
    assert reg.show("chat").version == 1
    with pytest.raises(RegistryLockedError, match="locked") as info:
        reg.add(make_adapter(tmp_path / "b", 2), "chat")
    assert isinstance(info.value, RegistryError) and "retry" in str(info.value).lower()
    with pytest.raises(RegistryLockedError):
        reg.promote("chat:1", to="production")
    with pytest.raises(RegistryLockedError):
        reg.rollback("chat", "production")
    holder.execute("ROLLBACK")
    holder.close()
    # the retry succeeds, and the failed add's uncommitted blobs are cleaned on the next open
    assert str(reg.add(make_adapter(tmp_path / "b", 2), "chat")) == "chat:2"
    reg.close()
    with Registry(tmp_path / "reg") as fresh:
        assert list(fresh.blobs.tmp_dir.iterdir()) == []
        used = {f.sha256 for r in fresh.list() for f in r.files}
        assert set(fresh.blobs.all_digests()) == used and before < used
        assert fresh.verify().ok


def test_add_waits_for_a_running_gc_then_gives_a_retriable_error(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg", lock_timeout=0.2) as reg:
        with file_lock(reg.blobs.lock_path, exclusive=True):  # what a gc in another process holds
            with pytest.raises(RegistryLockedError, match="gc or add"):
                reg.add(make_adapter(tmp_path / "a", 1), "chat")
            assert reg.names() == []
        assert reg.add(make_adapter(tmp_path / "a", 1), "chat").version == 1


def test_bad_roots_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryError, match="is a file"):
        Registry(tmp_path / "file")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "registry.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match="not a usable registry database"):
        Registry(tmp_path / "junk")
