"""API keys (stored hashed, with scopes) and per-key token-bucket rate limits.

The keys file is JSON: ``{"keys": [{"id": "alice", "hash": "sha256$<salt>$<hex>", "scopes": ["inference"],
"rate_per_s": 5, "burst": 10}]}``. Hashes are ``sha256$salt$hex`` (keys are random, so a salted SHA-256 is
enough) or ``scrypt$n$r$p$salt$hex``. ``hash_api_key`` and ``new_api_key`` make entries; the clear key is
shown once and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slimtune.errors import ConfigError

Scope = Literal["inference", "admin"]
SCOPES: tuple[str, ...] = ("inference", "admin")


@dataclass(frozen=True)
class ApiKey:
    """One key as the server knows it: never the clear key, only its hash."""

    id: str
    """Who the key belongs to; logged and used as the rate-limit bucket."""
    hash: str
    """``sha256$salt$hex`` or ``scrypt$n$r$p$salt$hex``."""
    scopes: frozenset[str]
    """Subset of ``inference`` and ``admin``."""
    rate_per_s: float | None = None
    """This key's request rate (None: the server default)."""
    burst: float | None = None
    """This key's bucket size (None: the server default)."""


def new_api_key() -> str:
    """A fresh random key (show it once to its owner; store only ``hash_api_key`` of it)."""
    return "st-" + secrets.token_urlsafe(32)


def hash_api_key(key: str, method: Literal["sha256", "scrypt"] = "sha256") -> str:
    """The string to store for ``key``."""
    salt = secrets.token_hex(16)
    if method == "scrypt":
        n, r, p = 2**14, 8, 1
        digest = hashlib.scrypt(key.encode(), salt=bytes.fromhex(salt), n=n, r=r, p=p).hex()
        return f"scrypt${n}${r}${p}${salt}${digest}"
    return f"sha256${salt}${hashlib.sha256(bytes.fromhex(salt) + key.encode()).hexdigest()}"


def check_api_key(key: str, stored: str) -> bool:
    """True if ``key`` hashes to ``stored`` (constant-time comparison)."""
    parts = stored.split("$")
    if parts[0] == "sha256" and len(parts) == 3:
        digest = hashlib.sha256(bytes.fromhex(parts[1]) + key.encode()).hexdigest()
        return hmac.compare_digest(digest, parts[2])
    if parts[0] == "scrypt" and len(parts) == 6:
        n, r, p = (int(x) for x in parts[1:4])
        digest = hashlib.scrypt(key.encode(), salt=bytes.fromhex(parts[4]), n=n, r=r, p=p).hex()
        return hmac.compare_digest(digest, parts[5])
    raise ConfigError(f"unknown key hash format {parts[0]!r}: expected 'sha256$salt$hex' or 'scrypt$n$r$p$salt$hex'")


def write_keys_file(path: Path, keys: list[ApiKey]) -> None:
    """Write ``keys`` (hashes only) to ``path`` as JSON, readable by the owner only."""
    body = {"keys": [{"id": k.id, "hash": k.hash, "scopes": sorted(k.scopes), "rate_per_s": k.rate_per_s,
                      "burst": k.burst} for k in keys]}
    path.write_text(json.dumps(body, indent=2) + "\n")
    path.chmod(0o600)


def load_keys_file(path: Path) -> list[ApiKey]:
    """Read and validate a keys file; ConfigError names the entry and field that is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc}") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"keys file {path} must hold {{\"keys\": [...]}}")
    keys = [_parse_entry(path, i, entry) for i, entry in enumerate(entries)]
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"keys file {path} repeats key ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    return keys


def _parse_entry(path: Path, index: int, entry: object) -> ApiKey:
    where = f"keys file {path}, entry {index}"
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(entry.get("hash"), str):
        raise ConfigError(f"{where}: needs string fields 'id' and 'hash', got {entry!r}")
    scopes = entry.get("scopes", ["inference"])
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise ConfigError(f"{where}: scopes must be a non-empty list of {list(SCOPES)}, got {scopes!r}")
    if entry["hash"].split("$")[0] not in ("sha256", "scrypt"):
        raise ConfigError(f"{where}: hash must start with 'sha256$' or 'scrypt$' (never store a clear key)")
    rate, burst = entry.get("rate_per_s"), entry.get("burst")
    for field_name, value in (("rate_per_s", rate), ("burst", burst)):
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ConfigError(f"{where}: {field_name} must be a positive number, got {value!r}")
    return ApiKey(entry["id"], entry["hash"], frozenset(scopes), rate, burst)


class KeyStore:
    """Looks presented keys up among the stored hashes; remembers recent successes by a digest of the key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys
        self._known: dict[str, ApiKey] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def lookup(self, presented: str) -> ApiKey | None:
        """The key ``presented`` matches, or None."""
        fast = hashlib.sha256(presented.encode()).hexdigest()  # cache key only; scrypt runs once per key
        with self._lock:
            if fast in self._known:
                return self._known[fast]
        found = next((k for k in self.keys if check_api_key(presented, k.hash)), None)
        if found is not None:
            with self._lock:
                if len(self._known) > 10_000:
                    self._known.clear()
                self._known[fast] = found
        return found


class RateLimiter:
    """One token bucket per key id: ``rate`` tokens per second up to ``burst``; each request takes one."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str, rate: float | None = None, burst: float | None = None) -> float:
        """0.0 if a request may go now, else the seconds until one may (for Retry-After)."""
        rate, burst = rate or self.rate, burst or self.burst
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[who] = (tokens - 1.0, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1.0 - tokens) / rate


def retry_after_header(wait_s: float) -> str:
    """Retry-After in whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
