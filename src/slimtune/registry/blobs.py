"""Content-addressed blob store: ``ROOT/blobs/sha256/ab/abcdef...``, written atomically, read verified.

A blob is written to a temporary file on the same file system, fsynced, re-hashed, and only then moved into
place with ``os.replace``; a reader therefore sees a whole blob or none. Identical content is stored once.
A process-shared file lock (``ROOT/locks/gc.lock``) keeps garbage collection and crash clean-up away from
blobs that an ``add`` in another process has placed but not yet committed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from slimtune.errors import IntegrityError, RegistryError, RegistryLockedError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SHA_RE = re.compile(r"[0-9a-f]{64}")
PLACED = "placed.txt"


def hash_file(path: Path) -> tuple[str, int]:
    """The sha256 hex digest and size in bytes of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_hashing(src: Path, dest: Path, durable: bool = True) -> tuple[str, int]:
    """Copy src to a new file dest (fsynced if durable); return the digest and size of the bytes written."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            fout.write(chunk)
        fout.flush()
        if durable:
            os.fsync(fout.fileno())
    return digest.hexdigest(), size


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool, timeout: float | None = None) -> Iterator[bool]:
    """Hold an flock on ``path``.

    ``timeout`` None waits as long as it takes; 0 yields False (holding nothing) if the lock is taken;
    a positive timeout raises RegistryLockedError once it has passed. flock locks die with their process,
    so a killed ``add`` never leaves the registry locked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        acquired = _flock(fd, path, exclusive=exclusive, timeout=timeout)
        try:
            yield acquired
        finally:
            if acquired:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _flock(fd: int, path: Path, *, exclusive: bool, timeout: float | None) -> bool:
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if timeout is None:
        fcntl.flock(fd, mode)
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RegistryError(f"could not lock {path}: {exc}") from exc
        if timeout == 0:
            return False
        if time.monotonic() >= deadline:
            raise RegistryLockedError(
                f"{path} is held by another registry process (a gc or add) for more than {timeout:g} s; retry"
            )
        time.sleep(0.02)


class BlobStore:
    """The blob folder of one registry root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.tmp_dir = root / "tmp"
        self.lock_path = root / "locks" / "gc.lock"
        for folder in (self.blob_dir, self.tmp_dir, self.lock_path.parent):
            folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        if not SHA_RE.fullmatch(sha):
            raise RegistryError(f"{sha!r} is not a sha256 hex digest")
        return self.blob_dir / sha[:2] / sha

    def new_staging(self, prefix: str) -> Path:
        """A fresh temporary folder under ROOT/tmp (same file system as the blobs, so renames are atomic)."""
        folder = self.tmp_dir / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        return folder

    def put(self, src: Path, staging: Path) -> tuple[str, int]:
        """Store the content of src; return (sha256, size). Verified: the stored blob is re-hashed."""
        tmp = staging / f"blob-{uuid.uuid4().hex}"
        sha, size = copy_hashing(src, tmp)
        final = self.path(sha)
        if final.exists() and self.check(sha, size) == "ok":
            tmp.unlink()
            return sha, size
        if hash_file(tmp) != (sha, size):
            raise IntegrityError(f"copy of {src} changed while being stored (disk or concurrent write); retry")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        self._record_placed(staging, sha)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        if hash_file(final) != (sha, size):
            raise IntegrityError(f"blob {sha} does not match its content right after it was written; check the disk")
        return sha, size

    @staticmethod
    def _record_placed(staging: Path, sha: str) -> None:
        # Written before the rename: crash clean-up then knows every blob this add may have left behind.
        with open(staging / PLACED, "a", encoding="ascii") as fh:
            fh.write(sha + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def placed_by(staging: Path) -> list[str]:
        """The digests an interrupted add recorded as (possibly) placed in the store."""
        try:
            lines = (staging / PLACED).read_text(encoding="ascii").split()
        except (FileNotFoundError, UnicodeDecodeError):
            return []
        return [line for line in lines if SHA_RE.fullmatch(line)]

    def staging_dirs(self) -> list[Path]:
        """The temporary folders under ROOT/tmp."""
        return sorted(p for p in self.tmp_dir.iterdir() if p.is_dir() and not p.is_symlink())

    def check(self, sha: str, size: int | None = None) -> str:
        """'ok', 'missing' or 'corrupt' (content does not hash to its name, or the size differs)."""
        path = self.path(sha)
        if not path.is_file():
            return "missing"
        found, found_size = hash_file(path)
        if found != sha or (size is not None and found_size != size):
            return "corrupt"
        return "ok"

    def all_digests(self) -> Iterator[str]:
        """Digests of every blob file present (by name)."""
        for sub in sorted(self.blob_dir.iterdir()):
            if not sub.is_dir():
                continue
            for blob in sorted(sub.iterdir()):
                if SHA_RE.fullmatch(blob.name):
                    yield blob.name

    def remove(self, sha: str) -> int:
        """Delete one blob; return the bytes freed (0 if it was already gone)."""
        path = self.path(sha)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def copy_out(self, sha: str, size: int, dest: Path, what: str) -> None:
        """Copy a blob to dest, re-hashing what is read; IntegrityError if it is missing or tampered."""
        src = self.path(sha)
        if not src.is_file():
            raise IntegrityError(
                f"blob {sha} of {what} is missing from {self.blob_dir}; the store was damaged. Run "
                "`slimtune registry verify`, then re-add the adapter from its source"
            )
        # no fsync: a checkout is re-verified on every use, so a torn one after a crash is rebuilt, not used
        found, found_size = copy_hashing(src, dest, durable=False)
        if found != sha or found_size != size:
            dest.unlink(missing_ok=True)
            raise IntegrityError(
                f"blob {sha} of {what} is tampered or corrupt: it hashes to {found} ({found_size} bytes, "
                f"expected {size}); refusing to load it. Run `slimtune registry verify`, then re-add it"
            )

    def clean_tmp(self) -> list[Path]:
        """Remove everything under ROOT/tmp; call only while holding the exclusive gc lock."""
        removed: list[Path] = []
        for entry in sorted(self.tmp_dir.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        return removed
