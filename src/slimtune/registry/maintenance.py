"""Whole-store checks and clean-up: ``verify`` (re-hash every blob, check manifests and the audit chain) and
``gc`` (remove blobs no live version uses).
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from slimtune.errors import IntegrityError
from slimtune.registry import audit, queries
from slimtune.registry.blobs import file_lock
from slimtune.registry.checkout import cache_path
from slimtune.registry.records import BlobProblem, GcReport, VerifyReport

if TYPE_CHECKING:
    from slimtune.registry.store import Registry

log = logging.getLogger(__name__)


def _usage(reg: Registry) -> tuple[dict[str, list[str]], set[str]]:
    """(sha -> live 'NAME:V/relpath' users, every sha referenced by any version, deleted ones included)."""
    live: dict[str, list[str]] = defaultdict(list)
    every: set[str] = set()
    rows = reg.conn.execute(
        "SELECT f.name, f.version, f.relpath, f.sha256, v.deleted FROM version_files f "
        "JOIN versions v ON v.name = f.name AND v.version = f.version ORDER BY f.name, f.version, f.relpath"
    )
    for r in rows:
        every.add(r["sha256"])
        if not r["deleted"]:
            live[r["sha256"]].append(f"{r['name']}:{r['version']}/{r['relpath']}")
    return live, every


def verify(reg: Registry) -> VerifyReport:
    """Re-hash every blob present; report corrupt and missing ones, bad manifests/signatures, audit breaks."""
    with file_lock(reg.blobs.lock_path, exclusive=False, timeout=reg.lock_timeout):  # no gc meanwhile
        with reg.read_txn():
            live, every = _usage(reg)
            manifest_problems = []
            for rec in queries.records(reg.conn, None, include_deleted=False):
                try:
                    reg.check_record(rec)
                except IntegrityError as exc:
                    manifest_problems.append(str(exc))
            audit_problems = audit.verify_chain(reg.conn)
        present = set(reg.blobs.all_digests())
        problems = [
            BlobProblem(sha, "corrupt", tuple(live.get(sha, ())))
            for sha in sorted(present)
            if reg.blobs.check(sha) != "ok"
        ]
        problems += [
            BlobProblem(sha, "missing", tuple(users)) for sha, users in sorted(live.items()) if sha not in present
        ]
    report = VerifyReport(
        checked_blobs=len(present),
        problems=tuple(problems),
        bad_signatures=tuple(manifest_problems),
        audit_problems=tuple(audit_problems),
        unreferenced_blobs=len(present - every),
    )
    if not report.ok:
        log.error(
            "registry %s failed verification: %d blob problems, %d manifest problems, %d audit problems",
            reg.root,
            len(problems),
            len(manifest_problems),
            len(audit_problems),
        )
    return report


def gc(reg: Registry, dry_run: bool = False) -> GcReport:
    """Remove blobs that no live version uses (waiting for running adds), stale checkouts and temp files."""
    with file_lock(reg.blobs.lock_path, exclusive=True):
        if not dry_run:
            reg._recover_locked()
        with reg.read_txn():
            live, _ = _usage(reg)
            live_caches = {cache_path(reg, rec) for rec in queries.records(reg.conn, None, include_deleted=False)}
        doomed = sorted(sha for sha in reg.blobs.all_digests() if sha not in live)
        freed = sum(reg.blobs.path(sha).stat().st_size for sha in doomed)
        if not dry_run:
            for sha in doomed:
                reg.blobs.remove(sha)
            _clean_cache(reg, live_caches)
            with reg.write_txn("record gc"):
                audit.append(
                    reg.conn,
                    actor=reg.actor,
                    action="gc",
                    details={"removed_blobs": len(doomed), "freed_bytes": freed},
                )
    log.info(
        "gc of %s: %s %d blobs (%d bytes)",
        reg.root,
        "would remove" if dry_run else "removed",
        len(doomed),
        freed,
    )
    return GcReport(removed=tuple(doomed), freed_bytes=freed, kept=len(live), dry_run=dry_run)


def _clean_cache(reg: Registry, keep: set[Path]) -> None:
    cache = reg.root / "cache"
    if not cache.is_dir():
        return
    for model_dir in cache.iterdir():
        for entry in model_dir.iterdir() if model_dir.is_dir() else ():
            if entry not in keep:
                shutil.rmtree(entry, ignore_errors=True)
