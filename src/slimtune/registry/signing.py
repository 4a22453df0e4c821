"""Optional signatures of version manifests: HMAC-SHA256 with a shared key, or ed25519 via ``cryptography``.

What is signed is the model name, the version number and the sha256 of the canonical manifest (which lists
every file's sha256), so a signature cannot be moved to another version and no file can be swapped without
breaking it. Signatures are stored as ``"<scheme>:<hex>"``.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any, Protocol

from slimtune.errors import IntegrityError, RegistryError
from slimtune.registry.audit import canonical_json

HMAC_SCHEME = "hmac-sha256"
ED25519_SCHEME = "ed25519"


class ManifestKey(Protocol):
    """What the registry needs from a key: sign (if it can) and verify."""

    scheme: str

    @property
    def can_sign(self) -> bool: ...

    def sign(self, payload: bytes) -> str: ...

    def verify(self, payload: bytes, signature: str) -> bool: ...


class HmacKey:
    """A shared secret; signs and verifies."""

    scheme = HMAC_SCHEME

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise RegistryError("an HMAC signing key must be at least 16 bytes (use e.g. os.urandom(32))")
        self._secret = secret

    @property
    def can_sign(self) -> bool:
        return True

    def sign(self, payload: bytes) -> str:
        return f"{self.scheme}:{hmac.new(self._secret, payload, hashlib.sha256).hexdigest()}"

    def verify(self, payload: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(payload), signature)


class Ed25519Key:
    """An ed25519 key pair (signs and verifies) or public key (verifies only), from ``cryptography``."""

    scheme = ED25519_SCHEME

    def __init__(self, private_key: Any = None, public_key: Any = None) -> None:
        if private_key is None and public_key is None:
            raise RegistryError("Ed25519Key needs a private key (to sign) or a public key (to verify)")
        self._private = private_key
        self._public = public_key if public_key is not None else private_key.public_key()

    @classmethod
    def generate(cls) -> Ed25519Key:
        """A fresh key pair (for tests and first set-up)."""
        ed25519 = _ed25519()
        return cls(private_key=ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> Ed25519Key:
        """Load a PEM private key (PKCS8) or public key (SubjectPublicKeyInfo)."""
        _ed25519()
        from cryptography.hazmat.primitives import serialization

        try:
            if b"PRIVATE KEY" in data:
                return cls(private_key=serialization.load_pem_private_key(data, password=None))
            return cls(public_key=serialization.load_pem_public_key(data))
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"could not read the ed25519 PEM key: {exc}") from exc

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS8 PEM (RegistryError if this is a public key only)."""
        from cryptography.hazmat.primitives import serialization

        if self._private is None:
            raise RegistryError("this ed25519 key is a public key only; it has no private part")
        return self._private.private_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM."""
        from cryptography.hazmat.primitives import serialization

        return self._public.public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_only(self) -> Ed25519Key:
        """The same key without its private part (what readers should hold)."""
        return Ed25519Key(public_key=self._public)

    @property
    def can_sign(self) -> bool:
        return self._private is not None

    def sign(self, payload: bytes) -> str:
        if self._private is None:
            raise RegistryError(
                "the configured ed25519 key is a public key: it can verify but not sign; adding a version "
                "needs the private key"
            )
        return f"{self.scheme}:{self._private.sign(payload).hex()}"

    def verify(self, payload: bytes, signature: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        scheme, _, hexsig = signature.partition(":")
        if scheme != self.scheme:
            return False
        try:
            self._public.verify(bytes.fromhex(hexsig), payload)
        except (InvalidSignature, ValueError):
            return False
        return True


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # optional dependency
        raise RegistryError("ed25519 signing needs the 'cryptography' package: pip install cryptography") from exc
    return ed25519


def as_key(key: bytes | ManifestKey | None) -> ManifestKey | None:
    """Bytes become an HMAC key; key objects pass through; None means unsigned."""
    if key is None:
        return None
    if isinstance(key, bytes):
        return HmacKey(key)
    if hasattr(key, "sign") and hasattr(key, "verify"):
        return key
    raise RegistryError(f"signing_key must be bytes (HMAC), an Ed25519Key or None, not {type(key).__name__}")


def load_key_file(path: Path) -> ManifestKey:
    """A PEM file gives an ed25519 key; any other file is an HMAC secret (surrounding whitespace stripped)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(f"could not read signing key file {path}: {exc}") from exc
    if data.lstrip().startswith(b"-----BEGIN"):
        return Ed25519Key.from_pem(data)
    return HmacKey(data.strip())


def signing_payload(name: str, version: int, manifest_sha256: str) -> bytes:
    """The bytes a version's signature covers."""
    return canonical_json({"name": name, "version": version, "manifest_sha256": manifest_sha256}).encode()


def check_signature(key: ManifestKey, name: str, version: int, manifest_sha256: str, signature: str | None) -> None:
    """IntegrityError unless ``signature`` is a valid signature by ``key`` of this version."""
    if not signature:
        raise IntegrityError(
            f"{name}:{version} is unsigned, but a signing key is configured; refusing it. Re-add it with the "
            "key, or open the registry without signing_key if unsigned versions are acceptable"
        )
    scheme = signature.partition(":")[0]
    if scheme != key.scheme:
        raise IntegrityError(
            f"{name}:{version} is signed with {scheme!r} but the configured key is {key.scheme!r}; refused"
        )
    if not key.verify(signing_payload(name, version, manifest_sha256), signature):
        raise IntegrityError(
            f"the signature of {name}:{version} does not verify: manifest altered or wrong key; refusing it"
        )
