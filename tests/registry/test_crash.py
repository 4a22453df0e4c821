"""SIGKILL during ``add``, at three points: the registry stays consistent and the next open cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from registry_helpers import make_adapter

from slimtune.registry import Registry

SRC = Path(__file__).resolve().parents[2] / "src"

CHILD = r"""
import sys, time
from pathlib import Path
root, source, ready, stage = sys.argv[1:5]

def hang(*args, **kwargs):
    Path(ready).write_text("ready")
    time.sleep(120)

if stage == "blobs":  # two blobs are in the store, the rest is not, nothing is committed
    from slimtune.registry.blobs import BlobStore
    real_put, count = BlobStore.put, [0]
    def put(self, src, staging):
        out = real_put(self, src, staging)
        count[0] += 1
        if count[0] == 2:
            hang()
        return out
    BlobStore.put = put
elif stage == "transaction":  # inside BEGIN IMMEDIATE, version row inserted, holding the write lock
    import slimtune.registry.audit as audit
    audit.append = hang
elif stage == "committed":  # committed, staging folder not yet removed
    import slimtune.registry.store as store
    store.shutil.rmtree = hang

from slimtune.registry import Registry
Registry(root, actor="victim").add(source, "chat")
"""


def kill_mid_add(tmp_path: Path, stage: str, source: Path) -> None:
    (tmp_path / "child.py").write_text(CHILD)
    ready = tmp_path / f"ready-{stage}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "reg"), str(source), str(ready), stage],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child never reached the pause point")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize(("stage", "committed"), [("blobs", False), ("transaction", False), ("committed", True)])
def test_kill_during_add_leaves_a_consistent_registry(tmp_path: Path, stage: str, committed: bool) -> None:
    with Registry(tmp_path / "reg") as reg:
        reg.add(make_adapter(tmp_path / "a1", 1), "chat")
        reg.set_alias("chat:1", "production")
        before = set(reg.blobs.all_digests())
    kill_mid_add(tmp_path, stage, make_adapter(tmp_path / "a2", 2))
    leftovers = list((tmp_path / "reg" / "tmp").iterdir())
    assert leftovers, "the killed add should have left its temporary folder"
    stored = {p.name for p in (tmp_path / "reg" / "blobs" / "sha256").rglob("*") if p.is_file()}
    assert stored - before  # some of the new version's blobs reached the store before the kill

    with Registry(tmp_path / "reg", lock_timeout=5) as reg:  # the next open cleans
        assert list(reg.blobs.tmp_dir.iterdir()) == []
        versions = [r.version for r in reg.list("chat", include_deleted=True)]
        assert versions == ([1, 2] if committed else [1])
        used = {f.sha256 for r in reg.list(include_deleted=True) for f in r.files}
        assert set(reg.blobs.all_digests()) == used
        if not committed:
            assert used == before
        assert reg.verify().ok and reg.resolve("chat@production").version == 1
        # the registry is fully usable: the lock is free and numbering continues densely
        assert reg.add(make_adapter(tmp_path / "a3", 3), "chat").version == versions[-1] + 1
        assert reg.verify().ok
