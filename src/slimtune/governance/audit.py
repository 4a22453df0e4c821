"""An append-only, hash-chained JSONL audit log of governance events (scans, trainings, overrides, and later
promotions and rollbacks). Each entry carries the hash of the one before, so an edited, deleted or
reordered line breaks the chain at a line that verify() names.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slimtune.errors import DataError

GENESIS = "0" * 64


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's hash is taken over: sorted keys, no spaces, UTF-8, the 'hash' key left out."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical form of an entry."""
    return hashlib.sha256(canonical(entry)).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking a log: ok, or the first bad line and what is wrong with it."""

    ok: bool
    entries: int
    line: int | None = None
    problem: str | None = None

    def __bool__(self) -> bool:
        return self.ok


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user database entry (some containers)
        return f"uid:{os.getuid()}"


class AuditLog:
    """The audit log at ``path``; appends from several processes are serialised by an exclusive flock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, action: str, subject: str, details: dict[str, Any] | None = None,
               actor: str | None = None) -> dict[str, Any]:
        """Add one entry and return it (with its seq and hash)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # held until close: read-last and write are one step
            try:
                last = _last_entry(fh, self.path)
                entry: dict[str, Any] = {
                    "seq": (last["seq"] + 1) if last else 0,
                    "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "actor": actor or _default_actor(), "action": action, "subject": subject,
                    "details": details or {}, "prev_hash": last["hash"] if last else GENESIS,
                }
                entry["hash"] = entry_hash(entry)
                fh.seek(0, os.SEEK_END)
                fh.write(json.dumps(entry, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return entry

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry, in file order (unchecked; use verify() to check the chain)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    yield json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise DataError(f"{self.path}:{number}: not a JSON audit entry") from None

    def verify(self) -> VerifyResult:
        """Check every line: valid JSON, seq in order, prev_hash linking to the line before, hash matching."""
        if not self.path.exists():
            return VerifyResult(True, 0)
        prev, count = GENESIS, 0
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                problem = _check_line(raw, number - 1, prev)
                if problem:
                    return VerifyResult(False, count, number, problem)
                prev = json.loads(raw)["hash"]
                count += 1
        return VerifyResult(True, count)


def _check_line(raw: bytes, expected_seq: int, prev: str) -> str | None:
    try:
        entry = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not valid JSON (truncated or edited)"
    if not isinstance(entry, dict) or "hash" not in entry:
        return "not an audit entry (no hash)"
    if entry.get("seq") != expected_seq:
        return f"seq {entry.get('seq')!r} where {expected_seq} was expected (a line deleted or moved)"
    if entry.get("prev_hash") != prev:
        return "prev_hash does not match the line before (a line deleted, inserted or moved)"
    if entry_hash(entry) != entry["hash"]:
        return "hash does not match the content (the line was edited)"
    return None


def _last_entry(fh: Any, path: Path) -> dict[str, Any] | None:
    """The last entry of an open log, read backwards from the end (logs grow; reading all would not scale)."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None
    block, data = 4096, b""
    pos = end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            try:
                entry: dict[str, Any] = json.loads(lines[-1])
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DataError(f"{path}: the last line is not a JSON entry; run verify() and repair the log "
                                "before appending") from None
            return entry
    return None
