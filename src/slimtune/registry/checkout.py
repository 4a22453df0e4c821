"""Verified checkouts: a version's files copied out of the blob store into a plain adapter folder.

Every byte is re-hashed as it is read, and the finished folder appears at once (built in a temporary folder,
then renamed), so a loader never sees a partial or tampered adapter. A cached checkout is re-hashed on every
use and rebuilt if anything in it changed.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from slimtune.errors import RegistryError
from slimtune.registry.blobs import file_lock, hash_file
from slimtune.registry.records import FileEntry, VersionRecord
from slimtune.registry.refs import RefSpec, VersionRef

if TYPE_CHECKING:
    from slimtune.registry.store import Registry

log = logging.getLogger(__name__)


def cache_path(reg: Registry, rec: VersionRecord) -> Path:
    """Where the cached checkout of a version lives."""
    return reg.root / "cache" / rec.name / f"v{rec.version}-{rec.manifest_sha256[:16]}"


def folder_matches(folder: Path, files: tuple[FileEntry, ...]) -> bool:
    """True if folder holds exactly these files with these hashes (nothing more, nothing less)."""
    if not folder.is_dir():
        return False
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    if present != sorted(f.relpath for f in files):
        return False
    return all(hash_file(folder / f.relpath) == (f.sha256, f.size) for f in files)


def _fill(reg: Registry, rec: VersionRecord, folder: Path) -> None:
    for entry in rec.files:
        target = folder / entry.relpath
        if not target.resolve().is_relative_to(folder.resolve()):
            raise RegistryError(f"{rec.ref} lists a file outside its folder: {entry.relpath!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        reg.blobs.copy_out(entry.sha256, entry.size, target, f"{rec.ref}/{entry.relpath}")


def _checkout_cached(reg: Registry, rec: VersionRecord) -> Path:
    target = cache_path(reg, rec)
    if folder_matches(target, rec.files):
        return target
    with file_lock(reg.blobs.lock_path, exclusive=False, timeout=reg.lock_timeout):
        staging = reg.blobs.new_staging("checkout")
        _fill(reg, rec, staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # stale or tampered: move it aside, then replace
            log.warning("cached checkout %s did not match %s; rebuilding it", target, rec.ref)
            aside = reg.blobs.tmp_dir / f"stale-{uuid.uuid4().hex[:12]}"
            os.replace(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:  # another process put a checkout there meanwhile
            shutil.rmtree(staging, ignore_errors=True)
            if not folder_matches(target, rec.files):
                raise
    return target


def _checkout_to(reg: Registry, rec: VersionRecord, dest: Path) -> Path:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RegistryError(f"checkout destination {dest} exists and is not an empty folder; choose a new path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        _fill(reg, rec, staging)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def materialize(reg: Registry, ref: str | RefSpec | VersionRef, dest: Path | None) -> tuple[Path, VersionRecord]:
    """Check a live version out (verified); return the folder and the version's record."""
    rec = reg.show(ref)
    if rec.deleted:
        raise RegistryError(f"{rec.ref} is deleted; its files may already be collected. Check out a live version")
    reg.check_record(rec)
    path = _checkout_cached(reg, rec) if dest is None else _checkout_to(reg, rec, dest)
    log.info("checked out %s to %s", rec.ref, path)
    return path, rec
