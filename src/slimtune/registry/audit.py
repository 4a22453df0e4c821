"""The registry's audit log: an append-only, hash-chained table in the registry database.

Each row records who did what, when and why; its hash covers its own fields and the previous row's hash,
so editing or removing a row in the middle breaks the chain and ``verify_chain`` names the first bad row.
Rows are written inside the same transaction as the change they describe: no change without its record.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from slimtune.registry.db import now_iso

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    """One audit row."""

    seq: int
    at: str
    actor: str
    action: str
    name: str | None
    version: int | None
    alias: str | None
    reason: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for every hash and signature."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _row_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(fields)).encode()).hexdigest()


def append(
    conn: sqlite3.Connection,
    *,
    actor: str,
    action: str,
    name: str | None = None,
    version: int | None = None,
    alias: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one row; call inside the write transaction of the change it records."""
    if not conn.in_transaction:
        raise RuntimeError("audit.append must run inside the write transaction of the change it records")
    last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    prev_hash = last["hash"] if last else GENESIS
    seq = (last["seq"] + 1) if last else 1
    fields: dict[str, Any] = {
        "seq": seq,
        "at": now_iso(),
        "actor": actor,
        "action": action,
        "name": name,
        "version": version,
        "alias": alias,
        "reason": reason,
        "details": details or {},
    }
    digest = _row_hash(prev_hash, fields)
    conn.execute(
        "INSERT INTO audit(seq, at, actor, action, name, version, alias, reason, details, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq,
            fields["at"],
            actor,
            action,
            name,
            version,
            alias,
            reason,
            canonical_json(fields["details"]),
            prev_hash,
            digest,
        ),
    )
    return AuditEntry(prev_hash=prev_hash, hash=digest, **fields)


def _entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        seq=row["seq"],
        at=row["at"],
        actor=row["actor"],
        action=row["action"],
        name=row["name"],
        version=row["version"],
        alias=row["alias"],
        reason=row["reason"],
        details=json.loads(row["details"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def entries(conn: sqlite3.Connection, name: str | None = None) -> list[AuditEntry]:
    """All audit rows in order, or those about one model name."""
    if name is None:
        rows = conn.execute("SELECT * FROM audit ORDER BY seq").fetchall()
    else:
        rows = conn.execute("SELECT * FROM audit WHERE name = ? ORDER BY seq", (name,)).fetchall()
    return [_entry(r) for r in rows]


def verify_chain(conn: sqlite3.Connection) -> list[str]:
    """Re-compute the hash chain; return one problem per broken row (empty: the log is intact)."""
    problems: list[str] = []
    prev_hash = GENESIS
    expected_seq = 1
    for row in conn.execute("SELECT * FROM audit ORDER BY seq"):
        entry = _entry(row)
        if entry.seq != expected_seq:
            problems.append(f"audit row {expected_seq} is missing (next row is {entry.seq})")
        if entry.prev_hash != prev_hash:
            problems.append(f"audit row {entry.seq}: prev_hash does not match the hash of the row before it")
        fields = {
            "seq": entry.seq,
            "at": entry.at,
            "actor": entry.actor,
            "action": entry.action,
            "name": entry.name,
            "version": entry.version,
            "alias": entry.alias,
            "reason": entry.reason,
            "details": entry.details,
        }
        if _row_hash(entry.prev_hash, fields) != entry.hash:
            problems.append(f"audit row {entry.seq} ({entry.action} by {entry.actor}) was altered: hash mismatch")
        prev_hash = entry.hash
        expected_seq = entry.seq + 1
    return problems
