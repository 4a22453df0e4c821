"""``Registry``: the versioned adapter store in one folder (registry.db, blobs/, tmp/, cache/).

Versions are immutable and numbered densely per name; aliases move atomically and are gated by a policy;
every change is audited. One ``Registry`` object holds one SQLite connection: use it from one thread, and
open one per process (many processes may share a root).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from slimtune.errors import IntegrityError, RegistryError
from slimtune.registry import aliases as alias_ops
from slimtune.registry import audit, checkout, db, maintenance, queries
from slimtune.registry.blobs import BlobStore, file_lock
from slimtune.registry.compare import diff_records
from slimtune.registry.policy import PromotionPolicy
from slimtune.registry.records import FileEntry, GcReport, History, VerifyReport, VersionRecord
from slimtune.registry.refs import RefSpec, VersionRef, check_name, parse_ref
from slimtune.registry.signing import ManifestKey, as_key, check_signature, signing_payload
from slimtune.registry.source import AdapterSource, Metrics, read_source

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = 1
Ref = str | RefSpec | VersionRef


class Registry:
    """A versioned adapter store rooted at ``root`` (created if missing).

    ``signing_key``: bytes for HMAC-SHA256, or an ``Ed25519Key`` (private to add, public to verify); when
    set, manifests are signed on add and checked on materialize, promote and verify. ``actor`` is who the
    audit log names (default: $USER). ``lock_timeout``: seconds to wait for a busy database before
    RegistryLockedError.
    """

    def __init__(
        self,
        root: Path | str,
        signing_key: bytes | ManifestKey | None = None,
        actor: str | None = None,
        lock_timeout: float = 10.0,
    ) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"registry root {self.root} is a file; give a folder (created if missing)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = as_key(signing_key)
        self.actor = db.current_actor(actor)
        self.lock_timeout = lock_timeout
        self.blobs = BlobStore(self.root)
        self.conn = db.connect(self.root / "registry.db", lock_timeout)
        self.recover()

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_txn(self, what: str) -> AbstractContextManager[sqlite3.Connection]:
        """A BEGIN IMMEDIATE transaction on this registry's connection (``what`` names it in lock errors)."""
        return db.transaction(self.conn, self.lock_timeout, what)

    def read_txn(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for every query inside it."""
        return db.read_snapshot(self.conn, self.lock_timeout)

    # ----------------------------------------------------------------- crash recovery

    def recover(self) -> list[Path]:
        """Clean what interrupted adds and checkouts left under ROOT/tmp (only if no add is running)."""
        with file_lock(self.blobs.lock_path, exclusive=True, timeout=0) as got:
            if not got:
                return []
            return self._recover_locked()

    def _recover_locked(self) -> list[Path]:
        placed: set[str] = set()
        for staging in self.blobs.staging_dirs():
            placed.update(self.blobs.placed_by(staging))
        with self.read_txn():
            referenced = {
                sha
                for sha in placed
                if self.conn.execute("SELECT 1 FROM version_files WHERE sha256 = ? LIMIT 1", (sha,)).fetchone()
            }
        for sha in sorted(placed - referenced):
            self.blobs.remove(sha)
        removed = self.blobs.clean_tmp()
        if removed:
            log.info(
                "registry %s: removed %d leftovers of interrupted operations (%d uncommitted blobs)",
                self.root,
                len(removed),
                len(placed - referenced),
            )
        return removed

    # ----------------------------------------------------------------- add

    def add(
        self,
        source_dir: Path | str,
        name: str,
        metrics: Metrics | None = None,
        scans: dict[str, Any] | None = None,
    ) -> VersionRef:
        """Store a run folder (``RUN/adapter``) or adapter folder as the next version of ``name``."""
        check_name(name)
        if self.key is not None and not self.key.can_sign:
            raise RegistryError("the configured key can only verify; adding a signed version needs the private key")
        src = read_source(Path(source_dir), metrics, scans)
        with file_lock(self.blobs.lock_path, exclusive=False, timeout=self.lock_timeout):
            staging = self.blobs.new_staging("add")
            files = self._store_files(src, staging)
            ref = self._commit_version(name, src, files)
            shutil.rmtree(staging, ignore_errors=True)  # on failure it stays, for recover() to clean
        log.info("added %s from %s (%d files)", ref, src.adapter_dir, len(files))
        return ref

    def _store_files(self, src: AdapterSource, staging: Path) -> tuple[FileEntry, ...]:
        entries = []
        for rel, path in src.files:
            sha, size = self.blobs.put(path, staging)
            entries.append(FileEntry(rel, sha, size))
        return tuple(entries)

    def _manifest(self, name: str, version: int, src: AdapterSource, files: tuple[FileEntry, ...]) -> dict[str, Any]:
        lineage = src.lineage
        return {
            "schema": MANIFEST_SCHEMA,
            "name": name,
            "version": version,
            "created": db.now_iso(),
            "created_by": self.actor,
            "source": str(src.adapter_dir.resolve()),
            "base_model": lineage.get("base_model"),
            "base_fingerprint": lineage.get("base_fingerprint"),
            "library_version": lineage.get("library_version"),
            "git_hash": lineage.get("git_hash"),
            "datasets": lineage.get("datasets") or [],
            "recipe": src.recipe,
            "seed": lineage.get("seed"),
            "metrics": src.metrics,
            "scans": src.scans,
            "adapter_config": src.adapter_config,
            "lineage": lineage,
            "files": {f.relpath: {"sha256": f.sha256, "size": f.size} for f in files},
        }

    def _commit_version(self, name: str, src: AdapterSource, files: tuple[FileEntry, ...]) -> VersionRef:
        with self.write_txn(f"add a version of {name!r}"):
            self.conn.execute(
                "INSERT OR IGNORE INTO models(name, created, created_by) VALUES (?, ?, ?)",
                (name, db.now_iso(), self.actor),
            )
            version = int(
                self.conn.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?", (name,)
                ).fetchone()[0]
            )
            manifest = self._manifest(name, version, src, files)
            text = audit.canonical_json(manifest)
            digest = hashlib.sha256(text.encode()).hexdigest()
            signature = self.key.sign(signing_payload(name, version, digest)) if self.key else None
            self.conn.execute(
                "INSERT INTO versions(name, version, manifest, manifest_sha256, signature, created,"
                " created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, version, text, digest, signature, manifest["created"], self.actor),
            )
            self.conn.executemany(
                "INSERT INTO version_files(name, version, relpath, sha256, size) VALUES (?, ?, ?, ?, ?)",
                [(name, version, f.relpath, f.sha256, f.size) for f in files],
            )
            audit.append(
                self.conn,
                actor=self.actor,
                action="add",
                name=name,
                version=version,
                details={
                    "source": manifest["source"],
                    "files": len(files),
                    "manifest_sha256": digest,
                    "signed": signature is not None,
                    "base_fingerprint": manifest["base_fingerprint"],
                },
            )
        return VersionRef(name, version)

    # ----------------------------------------------------------------- reading

    def resolve(self, ref: Ref) -> VersionRef:
        """The version ``NAME``, ``NAME:3`` or ``NAME@alias`` names now."""
        with self.read_txn():
            return queries.resolve(self.conn, ref)

    def show(self, ref: Ref) -> VersionRecord:
        """The full record of one version (deleted ones included, marked)."""
        with self.read_txn():
            return queries.record(self.conn, queries.resolve(self.conn, ref))

    def aliases(self, name: str) -> dict[str, int]:
        """alias -> version for one model."""
        with self.read_txn():
            queries.require_model(self.conn, name)
            return queries.aliases_of(self.conn, name)

    def names(self) -> list[str]:
        """Every registered model name."""
        with self.read_txn():
            return queries.model_names(self.conn)

    def history(self, name: str) -> History:
        """Versions (deleted too), current aliases, every alias move and the audit entries of ``name``."""
        check_name(name)
        with self.read_txn():
            queries.require_model(self.conn, name)
            return History(
                name=name,
                versions=tuple(queries.records(self.conn, name, include_deleted=True)),
                aliases=queries.aliases_of(self.conn, name),
                alias_moves=queries.alias_moves(self.conn, name),
                audit=tuple(audit.entries(self.conn, name)),
            )

    def audit_log(self, name: str | None = None) -> list[audit.AuditEntry]:
        """Every audit entry, or those about one model."""
        with self.read_txn():
            return audit.entries(self.conn, name)

    def verify_audit(self) -> list[str]:
        """Problems in the audit hash chain (empty: intact)."""
        with self.read_txn():
            return audit.verify_chain(self.conn)

    def diff(self, ref_a: Ref, ref_b: Ref) -> dict[str, Any]:
        """Config, lineage, metrics and files of two versions side by side (see ``render_diff``)."""
        with self.read_txn():
            a = queries.record(self.conn, queries.resolve(self.conn, ref_a))
            b = queries.record(self.conn, queries.resolve(self.conn, ref_b))
        return diff_records(a, b)

    def check_record(self, rec: VersionRecord) -> None:
        """IntegrityError unless the manifest matches its hash, its file table and (with a key) signature."""
        text = audit.canonical_json(rec.manifest)
        if hashlib.sha256(text.encode()).hexdigest() != rec.manifest_sha256:
            raise IntegrityError(f"the manifest of {rec.ref} was altered in the database: its hash does not match")
        listed = {rel: (v["sha256"], v["size"]) for rel, v in (rec.manifest.get("files") or {}).items()}
        if listed != {f.relpath: (f.sha256, f.size) for f in rec.files}:
            raise IntegrityError(f"the file table of {rec.ref} does not match its manifest; the database was altered")
        if self.key is not None:
            check_signature(self.key, rec.name, rec.version, rec.manifest_sha256, rec.signature)

    # ----------------------------------------------------------------- changes

    def delete(self, ref: Ref, reason: str | None = None) -> VersionRef:
        """Soft-delete ``NAME:VERSION`` (refused while an alias points at it); its blobs become collectable."""
        spec = parse_ref(ref)
        if spec.version is None:
            raise RegistryError(f"delete needs an explicit version, e.g. '{spec.name}:3', not {str(spec)!r}")
        with self.write_txn(f"delete {spec}"):
            target = queries.resolve(self.conn, spec)
            rec = queries.record(self.conn, target)
            if rec.deleted:
                raise RegistryError(f"{target} is already deleted")
            if rec.aliases:
                raise RegistryError(
                    f"{target} is the target of alias(es) {', '.join(rec.aliases)}; move them first (promote "
                    f"another version or rollback), then delete"
                )
            self.conn.execute(
                "UPDATE versions SET deleted = 1, deleted_at = ?, deleted_by = ? WHERE name = ? AND version = ?",
                (db.now_iso(), self.actor, target.name, target.version),
            )
            audit.append(
                self.conn,
                actor=self.actor,
                action="delete",
                name=target.name,
                version=target.version,
                reason=reason,
            )
        return target

    def set_alias(self, ref: Ref, alias: str, reason: str | None = None) -> alias_ops.PromotionResult:
        """Point ``alias`` at a version with no gate (for aliases like 'dev'; use promote for gated ones)."""
        with self.write_txn(f"set alias {alias!r}"):
            return alias_ops.set_alias(self.conn, ref, alias, actor=self.actor, reason=reason)

    def promote(
        self, ref: Ref, to: str, policy: PromotionPolicy | None = None, force_reason: str | None = None
    ) -> alias_ops.PromotionResult:
        """Move alias ``to`` to ``ref`` if the gate passes; else PromotionRefused (a PolicyError).

        ``force_reason`` overrides a refusal; the reason and the failures are recorded in the audit log.
        """
        with self.write_txn(f"promote {ref} to {to!r}"):
            return alias_ops.promote(
                self.conn,
                ref,
                to,
                policy=policy or PromotionPolicy(),
                force_reason=force_reason,
                actor=self.actor,
                check_record=self.check_record,
            )

    def rollback(self, name: str, alias: str, reason: str | None = None) -> alias_ops.PromotionResult:
        """Point ``alias`` back at the version it held before its last move; RegistryError if none."""
        check_name(name)
        with self.write_txn(f"roll back {name}@{alias}"):
            return alias_ops.rollback(self.conn, name, alias, actor=self.actor, reason=reason)

    # ----------------------------------------------------------------- files

    def materialize(self, ref: Ref, dest: Path | str | None = None) -> Path:
        """Verified adapter folder for ``ref`` (in ROOT/cache unless ``dest``); IntegrityError if tampered."""
        return checkout.materialize(self, ref, None if dest is None else Path(dest))[0]

    def checkout(self, ref: Ref, dest: Path | str | None = None) -> tuple[Path, VersionRecord]:
        """Like materialize, also returning the record of the version checked out."""
        return checkout.materialize(self, ref, None if dest is None else Path(dest))

    def verify(self) -> VerifyReport:
        """Re-hash every blob; check every manifest (and signature, with a key) and the audit chain."""
        return maintenance.verify(self)

    def gc(self, dry_run: bool = False) -> GcReport:
        """Remove blobs that no live version uses, and stale cache folders; waits for running adds."""
        return maintenance.gc(self, dry_run=dry_run)

    def list(self, name: str | None = None, include_deleted: bool = False) -> list[VersionRecord]:
        """Versions of every model (or one), by name then version; deleted ones only if asked."""
        with self.read_txn():
            if name is not None:
                queries.require_model(self.conn, name)
            return queries.records(self.conn, name, include_deleted)
