"""Plain result types the registry returns (frozen dataclasses, each with ``to_dict`` for JSON output)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from slimtune.registry.audit import AuditEntry
from slimtune.registry.refs import VersionRef


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: where it goes in the adapter folder and which blob holds it."""

    relpath: str
    sha256: str
    size: int


@dataclass(frozen=True)
class VersionRecord:
    """One version as stored: its manifest, files, and the aliases pointing at it now."""

    name: str
    version: int
    created: str
    created_by: str
    deleted: bool
    deleted_at: str | None
    deleted_by: str | None
    manifest: dict[str, Any]
    manifest_sha256: str
    signature: str | None
    files: tuple[FileEntry, ...]
    aliases: tuple[str, ...]

    @property
    def ref(self) -> VersionRef:
        return VersionRef(self.name, self.version)

    @property
    def base_model(self) -> str | None:
        return self.manifest.get("base_model")

    @property
    def base_fingerprint(self) -> str | None:
        return self.manifest.get("base_fingerprint")

    @property
    def metrics(self) -> dict[str, dict[str, float | None]]:
        return self.manifest.get("metrics") or {}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ref"] = str(self.ref)
        return out


@dataclass(frozen=True)
class AliasMove:
    """One change of an alias (set, promote, force-promote or rollback)."""

    id: int
    alias: str
    old_version: int | None
    new_version: int
    action: str
    at: str
    actor: str
    reason: str | None


@dataclass(frozen=True)
class History:
    """Everything that happened to one model name."""

    name: str
    versions: tuple[VersionRecord, ...]
    aliases: dict[str, int]
    alias_moves: tuple[AliasMove, ...]
    audit: tuple[AuditEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [v.to_dict() for v in self.versions],
            "aliases": dict(self.aliases),
            "alias_moves": [asdict(m) for m in self.alias_moves],
            "audit": [asdict(a) for a in self.audit],
        }


@dataclass(frozen=True)
class BlobProblem:
    """A blob that is missing or whose content does not hash to its name, and who uses it."""

    sha256: str
    status: str
    used_by: tuple[str, ...]
    """``NAME:VERSION/relpath`` of every live version file stored in this blob."""


@dataclass(frozen=True)
class VerifyReport:
    """The result of re-hashing the whole store and checking signatures and the audit chain."""

    checked_blobs: int
    problems: tuple[BlobProblem, ...]
    bad_signatures: tuple[str, ...]
    audit_problems: tuple[str, ...]
    unreferenced_blobs: int

    @property
    def ok(self) -> bool:
        return not (self.problems or self.bad_signatures or self.audit_problems)

    @property
    def corrupt(self) -> tuple[BlobProblem, ...]:
        return tuple(p for p in self.problems if p.status == "corrupt")

    @property
    def missing(self) -> tuple[BlobProblem, ...]:
        return tuple(p for p in self.problems if p.status == "missing")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


@dataclass(frozen=True)
class GcReport:
    """What garbage collection removed (or would remove, on a dry run)."""

    removed: tuple[str, ...]
    freed_bytes: int
    kept: int
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
