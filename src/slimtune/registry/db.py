"""The registry's SQLite database: schema, WAL connection, and write transactions that retry on a lock.

Every write runs inside ``BEGIN IMMEDIATE`` so that reading the newest version number and inserting the next
one is one atomic step across processes. Versions and the audit log are protected by triggers: a version's
content can never change (only its soft-delete columns), and audit rows can never be updated or deleted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from slimtune.errors import RegistryError, RegistryLockedError

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS models(
    name TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions(
    name TEXT NOT NULL REFERENCES models(name),
    version INTEGER NOT NULL CHECK (version >= 1),
    manifest TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    signature TEXT,
    created TEXT NOT NULL,
    created_by TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    deleted_at TEXT,
    deleted_by TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS version_files(
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    relpath TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (name, version, relpath),
    FOREIGN KEY (name, version) REFERENCES versions(name, version)
);
CREATE INDEX IF NOT EXISTS version_files_sha ON version_files(sha256);
CREATE TABLE IF NOT EXISTS aliases(
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions(name, version)
);
CREATE TABLE IF NOT EXISTS alias_history(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    old_version INTEGER,
    new_version INTEGER NOT NULL,
    action TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS alias_stack(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alias_stack_key ON alias_stack(name, alias, id);
CREATE TABLE IF NOT EXISTS audit(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    name TEXT,
    version INTEGER,
    alias TEXT,
    reason TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS versions_immutable BEFORE UPDATE OF
    name, version, manifest, manifest_sha256, signature, created, created_by ON versions
BEGIN SELECT RAISE(ABORT, 'registry versions are immutable'); END;
CREATE TRIGGER IF NOT EXISTS versions_no_delete BEFORE DELETE ON versions
BEGIN SELECT RAISE(ABORT, 'registry versions are never removed; use a soft delete'); END;
CREATE TRIGGER IF NOT EXISTS version_files_immutable BEFORE UPDATE ON version_files
BEGIN SELECT RAISE(ABORT, 'registry versions are immutable'); END;
"""


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds and a 'Z'."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def current_actor(actor: str | None = None) -> str:
    """Who acts: the given actor, else $USER, else the login name, else 'unknown'."""
    if actor:
        return actor
    env = os.environ.get("USER")
    if env:
        return env
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (containers)
        return "unknown"


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def connect(path: Path, lock_timeout: float) -> sqlite3.Connection:
    """Open the database in WAL mode with a busy timeout, create the schema if needed."""
    conn = sqlite3.connect(str(path), timeout=lock_timeout, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(lock_timeout * 1000)}")
        _retry(lambda: conn.execute("PRAGMA journal_mode = WAL"), lock_timeout, "open the registry")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            with transaction(conn, lock_timeout, "create the registry schema"):
                _create_schema(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise RegistryError(f"{path} is not a usable registry database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _create_schema(conn: sqlite3.Connection) -> None:
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found not in (0, SCHEMA_VERSION):
        raise RegistryError(
            f"registry schema version {found} is not supported by this slimtune (expects {SCHEMA_VERSION}); "
            "upgrade slimtune"
        )
    for statement in _statements(SCHEMA):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _statements(script: str) -> list[str]:
    """Split the schema script on ';' outside trigger bodies (sqlite3.complete_statement does the parsing)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s.strip(" ;\n")]


def _retry(fn: Callable[[], T], lock_timeout: float, what: str) -> T:
    """Call fn, retrying with jittered backoff on a lock for about lock_timeout seconds."""
    deadline = time.monotonic() + max(lock_timeout, 0.0)
    delay = 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc):
                raise RegistryError(f"registry database error while trying to {what}: {exc}") from exc
            if time.monotonic() >= deadline:
                raise RegistryLockedError(
                    f"the registry database is locked by another process; could not {what} within "
                    f"{lock_timeout:g} s. Retry, or raise lock_timeout"
                ) from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, lock_timeout: float, what: str) -> Iterator[sqlite3.Connection]:
    """A ``BEGIN IMMEDIATE`` write transaction; commit on success, roll back on any exception.

    Taking the write lock at BEGIN (not at the first write) is what makes read-then-insert atomic. A lock
    that is still held after lock_timeout raises RegistryLockedError, which callers may retry.
    """
    _retry(lambda: conn.execute("BEGIN IMMEDIATE"), lock_timeout, what)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        _retry(lambda: conn.execute("COMMIT"), lock_timeout, what)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def read_snapshot(conn: sqlite3.Connection, lock_timeout: float) -> Iterator[sqlite3.Connection]:
    """A read transaction: every query inside sees the same snapshot of the database."""
    _retry(lambda: conn.execute("BEGIN DEFERRED"), lock_timeout, "read the registry")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
