"""Alias moves: set, gated promote, rollback. Each function runs inside the caller's write transaction.

Every move is recorded three times in the same transaction: the ``aliases`` row itself, a row in
``alias_history`` (what ``history`` shows), and an audit entry. The version an alias left is pushed on
``alias_stack``; ``rollback`` pops it, skipping versions deleted since, so it never points at a dead version.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from slimtune.errors import PolicyError, RegistryError
from slimtune.registry import audit, queries
from slimtune.registry.db import now_iso
from slimtune.registry.policy import GateResult, PromotionPolicy, PromotionRefused, evaluate
from slimtune.registry.records import VersionRecord
from slimtune.registry.refs import RefSpec, VersionRef, check_alias

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion did."""

    ref: VersionRef
    alias: str
    previous: int | None
    """The version the alias pointed at before (None: the alias is new)."""
    gate: GateResult = field(default_factory=GateResult)
    forced: bool = False
    changed: bool = True
    """False when the alias already pointed at this version (nothing was changed or logged)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "ref": str(self.ref),
            "alias": self.alias,
            "previous": self.previous,
            "forced": self.forced,
            "changed": self.changed,
            "gate": self.gate.to_dict(),
        }


def _is_live(conn: sqlite3.Connection, name: str, version: int) -> bool:
    row = conn.execute("SELECT deleted FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
    return row is not None and not row["deleted"]


def move_alias(
    conn: sqlite3.Connection,
    *,
    ref: VersionRef,
    alias: str,
    action: str,
    actor: str,
    reason: str | None,
    push: bool,
    details: dict[str, object] | None = None,
) -> int | None:
    """Point ``alias`` at ``ref``; return the version it pointed at before."""
    if not _is_live(conn, ref.name, ref.version):
        raise RegistryError(f"{ref} is deleted; an alias can only point at a live version")
    old = queries.alias_target(conn, ref.name, alias)
    at = now_iso()
    conn.execute(
        "INSERT INTO aliases(name, alias, version, updated, updated_by) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(name, alias) DO UPDATE SET version = excluded.version, updated = excluded.updated, "
        "updated_by = excluded.updated_by",
        (ref.name, alias, ref.version, at, actor),
    )
    conn.execute(
        "INSERT INTO alias_history(name, alias, old_version, new_version, action, at, actor, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ref.name, alias, old, ref.version, action, at, actor, reason),
    )
    if push and old is not None:
        conn.execute("INSERT INTO alias_stack(name, alias, version) VALUES (?, ?, ?)", (ref.name, alias, old))
    audit.append(
        conn,
        actor=actor,
        action=action,
        name=ref.name,
        version=ref.version,
        alias=alias,
        reason=reason,
        details={"from_version": old, **(details or {})},
    )
    log.info("%s: %s@%s %s -> %s (%s)", action, ref.name, alias, old, ref.version, actor)
    return old


def set_alias(
    conn: sqlite3.Connection, ref: str | RefSpec | VersionRef, alias: str, *, actor: str, reason: str | None
) -> PromotionResult:
    """Point an alias at a version without any gate (use promote for gated aliases)."""
    check_alias(alias)
    target = queries.resolve(conn, ref)
    current = queries.alias_target(conn, target.name, alias)
    if current == target.version:
        return PromotionResult(target, alias, current, changed=False)
    old = move_alias(conn, ref=target, alias=alias, action="set-alias", actor=actor, reason=reason, push=True)
    return PromotionResult(target, alias, old)


def _refusal(target: VersionRef, alias: str, current: int | None, result: GateResult) -> PromotionRefused:
    lines = [
        f"promotion of {target} to {alias!r} refused (current: "
        f"{f'{target.name}:{current}' if current is not None else 'none'}):"
    ]
    lines += [f"  - {f.rule}: {f.message}" for f in result.failures]
    lines.append(
        "To override, pass force_reason='why' (CLI: --force --reason 'why'); the override and these "
        "failures are recorded in the audit log."
    )
    return PromotionRefused("\n".join(lines), result)


def _gate(
    conn: sqlite3.Connection, policy: PromotionPolicy, candidate: VersionRecord, current: int | None
) -> GateResult:
    if current is None:
        return evaluate(policy, candidate.manifest, None)
    current_rec = queries.record(conn, VersionRef(candidate.name, current))
    return evaluate(policy, candidate.manifest, current_rec.manifest, str(current_rec.ref))


def promote(
    conn: sqlite3.Connection,
    ref: str | RefSpec | VersionRef,
    alias: str,
    *,
    policy: PromotionPolicy,
    force_reason: str | None,
    actor: str,
    check_record: Callable[[VersionRecord], None] | None = None,
) -> PromotionResult:
    """Gate the candidate against the alias's current version, then move the alias (or raise).

    ``check_record`` (integrity and signature check) runs on the candidate inside the same transaction.
    """
    check_alias(alias)
    if force_reason is not None and not force_reason.strip():
        raise PolicyError("a forced promotion needs a non-empty reason; it is recorded in the audit log")
    target = queries.resolve(conn, ref)
    candidate = queries.record(conn, target)
    if candidate.deleted:
        raise RegistryError(f"{target} is deleted; it cannot be promoted")
    if check_record is not None:
        check_record(candidate)
    current = queries.alias_target(conn, target.name, alias)
    if current == target.version:
        return PromotionResult(target, alias, current, changed=False)
    result = _gate(conn, policy, candidate, current)
    if not result.passed and force_reason is None:
        raise _refusal(target, alias, current, result)
    forced = not result.passed
    action = "force-promote" if forced else "promote"
    details: dict[str, object] = {"gate": result.to_dict()}
    old = move_alias(
        conn, ref=target, alias=alias, action=action, actor=actor, reason=force_reason, push=True, details=details
    )
    if forced:
        rules = [f.rule for f in result.failures]
        log.warning("forced promotion of %s to %s by %s: %s (failed: %s)", target, alias, actor, force_reason, rules)
    return PromotionResult(target, alias, old, result, forced=forced)


def rollback(conn: sqlite3.Connection, name: str, alias: str, *, actor: str, reason: str | None) -> PromotionResult:
    """Point the alias back at the version it held before the last move (skipping deleted ones)."""
    check_alias(alias)
    queries.require_model(conn, name)
    current = queries.alias_target(conn, name, alias)
    if current is None:
        raise RegistryError(f"{name} has no alias {alias!r}; nothing to roll back")
    skipped: list[int] = []
    while True:
        top = conn.execute(
            "SELECT id, version FROM alias_stack WHERE name = ? AND alias = ? ORDER BY id DESC LIMIT 1",
            (name, alias),
        ).fetchone()
        if top is None:
            extra = f" (skipped deleted versions {skipped})" if skipped else ""
            raise RegistryError(
                f"{name}@{alias} has no previous version to roll back to{extra}; it points at "
                f"{name}:{current}, its first target"
            )
        conn.execute("DELETE FROM alias_stack WHERE id = ?", (top["id"],))
        version = int(top["version"])
        if version != current and _is_live(conn, name, version):
            break
        skipped.append(version)
    move_alias(
        conn,
        ref=VersionRef(name, version),
        alias=alias,
        action="rollback",
        actor=actor,
        reason=reason,
        push=False,
        details={"skipped": skipped},
    )
    return PromotionResult(VersionRef(name, version), alias, current)
