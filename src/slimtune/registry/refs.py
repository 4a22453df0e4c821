"""Names, version references (``NAME``, ``NAME:3``, ``NAME@production``) and ``registry://`` URIs.

A reference names a model and, at most, one of a version number or an alias; a bare name means the newest
live version. Parsing happens here so that every entry point gives the same error for the same mistake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slimtune.errors import RegistryError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
URI_PREFIX = "registry://"

_REF_HELP = "expected NAME, NAME:VERSION (positive integer) or NAME@ALIAS, e.g. 'chat:3' or 'chat@production'"


@dataclass(frozen=True)
class VersionRef:
    """One immutable version of a registered adapter."""

    name: str
    """The model name the version belongs to."""
    version: int
    """The version number, 1 for the first add, dense per name."""

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class RefSpec:
    """A parsed reference: a name plus at most one of version or alias (neither: newest live version)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise RegistryError quoting it."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RegistryError(
            f"model name {name!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (no ':', '@' or '/')"
        )
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias name, else raise RegistryError quoting it."""
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise RegistryError(
            f"alias {alias!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "(e.g. 'staging', 'production')"
        )
    return alias


def parse_ref(ref: str | RefSpec | VersionRef) -> RefSpec:
    """Parse ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``; a RegistryError names what is wrong."""
    if isinstance(ref, RefSpec):
        return ref
    if isinstance(ref, VersionRef):
        return RefSpec(ref.name, version=ref.version)
    if not isinstance(ref, str) or not ref.strip():
        raise RegistryError(f"empty reference {ref!r}: {_REF_HELP}")
    text = ref.strip()
    if ":" in text and "@" in text:
        raise RegistryError(f"reference {ref!r} gives both a version and an alias: {_REF_HELP}")
    if ":" in text:
        name, _, version_text = text.partition(":")
        if not version_text.isdigit() or int(version_text) < 1:
            raise RegistryError(f"reference {ref!r}: version {version_text!r} is not a positive integer; {_REF_HELP}")
        return RefSpec(_ref_name(name, ref), version=int(version_text))
    if "@" in text:
        name, _, alias = text.partition("@")
        if not ALIAS_RE.fullmatch(alias):
            raise RegistryError(f"reference {ref!r}: alias {alias!r} is invalid; {_REF_HELP}")
        return RefSpec(_ref_name(name, ref), alias=alias)
    return RefSpec(_ref_name(text, ref))


def _ref_name(name: str, ref: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise RegistryError(f"reference {ref!r}: model name {name!r} is invalid; {_REF_HELP}")
    return name


def parse_uri(uri: str) -> RefSpec:
    """Parse ``registry://NAME[:VERSION|@ALIAS]`` into a RefSpec (the registry root comes from elsewhere)."""
    if not isinstance(uri, str) or not uri.startswith(URI_PREFIX):
        raise RegistryError(f"{uri!r} is not a registry URI: expected 'registry://NAME@ALIAS' or 'registry://NAME:3'")
    body = uri[len(URI_PREFIX) :]
    if "/" in body:
        raise RegistryError(
            f"registry URI {uri!r} contains '/': the root is not part of the URI; set SLIMTUNE_REGISTRY=ROOT "
            "(or pass root=) and use 'registry://NAME@ALIAS'"
        )
    return parse_ref(body)


def is_registry_uri(text: str) -> bool:
    """True if ``text`` is a ``registry://`` URI (for loaders that accept paths and URIs alike)."""
    return isinstance(text, str) and text.startswith(URI_PREFIX)
