"""Read-side SQL: resolving references to versions and loading version records (inside a snapshot)."""

from __future__ import annotations

import difflib
import json
import sqlite3

from slimtune.errors import RegistryError
from slimtune.registry.records import AliasMove, FileEntry, VersionRecord
from slimtune.registry.refs import RefSpec, VersionRef, parse_ref


def model_names(conn: sqlite3.Connection) -> list[str]:
    """Every registered model name, sorted."""
    return [r["name"] for r in conn.execute("SELECT name FROM models ORDER BY name")]


def require_model(conn: sqlite3.Connection, name: str) -> None:
    """RegistryError naming close matches if ``name`` is not registered."""
    if conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
        return
    names = model_names(conn)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(names) or 'none'}"
    raise RegistryError(f"no model named {name!r} in the registry{hint}")


def alias_target(conn: sqlite3.Connection, name: str, alias: str) -> int | None:
    """The version an alias points at now, or None if the alias is not set."""
    row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
    return None if row is None else int(row["version"])


def aliases_of(conn: sqlite3.Connection, name: str) -> dict[str, int]:
    """alias -> version for one model."""
    rows = conn.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,))
    return {r["alias"]: int(r["version"]) for r in rows}


def resolve(conn: sqlite3.Connection, ref: str | RefSpec | VersionRef) -> VersionRef:
    """The version a reference names; a bare name is the newest live version."""
    spec = parse_ref(ref)
    require_model(conn, spec.name)
    if spec.version is not None:
        if not conn.execute(
            "SELECT 1 FROM versions WHERE name = ? AND version = ?", (spec.name, spec.version)
        ).fetchone():
            top = conn.execute("SELECT MAX(version) FROM versions WHERE name = ?", (spec.name,)).fetchone()[0]
            raise RegistryError(f"{spec} does not exist: {spec.name} has versions 1 to {top}")
        return VersionRef(spec.name, spec.version)
    if spec.alias is not None:
        version = alias_target(conn, spec.name, spec.alias)
        if version is None:
            known = ", ".join(aliases_of(conn, spec.name)) or "none"
            raise RegistryError(f"{spec.name} has no alias {spec.alias!r} (aliases: {known}); set it with promote")
        return VersionRef(spec.name, version)
    row = conn.execute("SELECT MAX(version) FROM versions WHERE name = ? AND deleted = 0", (spec.name,)).fetchone()
    if row[0] is None:
        raise RegistryError(f"{spec.name} has no live version (all are deleted); name one with {spec.name}:N")
    return VersionRef(spec.name, int(row[0]))


def files_of(conn: sqlite3.Connection, name: str, version: int) -> tuple[FileEntry, ...]:
    """The files of one version, by relative path."""
    rows = conn.execute(
        "SELECT relpath, sha256, size FROM version_files WHERE name = ? AND version = ? ORDER BY relpath",
        (name, version),
    )
    return tuple(FileEntry(r["relpath"], r["sha256"], int(r["size"])) for r in rows)


def _record(conn: sqlite3.Connection, row: sqlite3.Row) -> VersionRecord:
    name, version = row["name"], int(row["version"])
    pointing = conn.execute("SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias", (name, version))
    return VersionRecord(
        name=name,
        version=version,
        created=row["created"],
        created_by=row["created_by"],
        deleted=bool(row["deleted"]),
        deleted_at=row["deleted_at"],
        deleted_by=row["deleted_by"],
        manifest=json.loads(row["manifest"]),
        manifest_sha256=row["manifest_sha256"],
        signature=row["signature"],
        files=files_of(conn, name, version),
        aliases=tuple(r["alias"] for r in pointing),
    )


def record(conn: sqlite3.Connection, ref: VersionRef) -> VersionRecord:
    """The full record of a resolved version."""
    row = conn.execute("SELECT * FROM versions WHERE name = ? AND version = ?", (ref.name, ref.version)).fetchone()
    if row is None:
        raise RegistryError(f"{ref} does not exist")
    return _record(conn, row)


def records(conn: sqlite3.Connection, name: str | None, include_deleted: bool) -> list[VersionRecord]:
    """Records of every version (of one name, or all), ordered by name then version."""
    sql = "SELECT * FROM versions WHERE (? IS NULL OR name = ?)"
    if not include_deleted:
        sql += " AND deleted = 0"
    rows = conn.execute(sql + " ORDER BY name, version", (name, name)).fetchall()
    return [_record(conn, r) for r in rows]


def alias_moves(conn: sqlite3.Connection, name: str) -> tuple[AliasMove, ...]:
    """Every alias change of one model, oldest first."""
    rows = conn.execute("SELECT * FROM alias_history WHERE name = ? ORDER BY id", (name,))
    return tuple(
        AliasMove(
            id=r["id"],
            alias=r["alias"],
            old_version=r["old_version"],
            new_version=r["new_version"],
            action=r["action"],
            at=r["at"],
            actor=r["actor"],
            reason=r["reason"],
        )
        for r in rows
    )
