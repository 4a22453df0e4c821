"""Dataset manifests: what a training file is (hash, size, rows, schema), where it came from, under which
licence, and what was done to it; recorded in the run's lineage (slimtune.json) and in scan reports.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from slimtune.governance.licences import identify_licence_text, normalize_licence
from slimtune.governance.reader import BadBytes, detect_format, iter_rows

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_LICENCE_FILES = ("LICENSE", "LICENCE", "COPYING", "LICENSE.txt", "LICENSE.md", "LICENCE.txt", "LICENCE.md",
                  "COPYING.txt", "license.txt", "license", "LICENSE-DATA", "DATA_LICENSE")
_README_LICENCE = re.compile(r"^licen[cs]e:\s*['\"]?([\w.+-]+)", re.MULTILINE | re.IGNORECASE)


@dataclass
class FileManifest:
    """The identity and provenance of one dataset file."""

    path: str
    sha256: str
    bytes: int
    rows: int
    format: str
    schema: dict[str, str]
    licence: str
    """An SPDX id (lower case) or 'unknown'."""
    licence_source: str
    """'declared', 'licence file <path>', 'dataset card <path>', 'package metadata <dist>' or 'not found'."""
    source: str | None = None
    transformations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def licence_inferred(self) -> bool:
        """True when the licence was read from package metadata, which may describe code rather than data."""
        return self.licence_source.startswith("package metadata")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileManifest:
        return cls(**data)


def sha256_file(path: PathLike, block: int = 1 << 20) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object{" + ",".join(sorted(value)) + "}"
    if isinstance(value, list):
        inner = sorted({_type_name(v) for v in value[:20]})
        return "list[" + "|".join(inner) + "]"
    return type(value).__name__


def _csv_type(value: str) -> str:
    for kind, convert in (("integer", int), ("number", float)):
        try:
            convert(value)
        except ValueError:
            continue
        return kind
    return "string"


def _schema(path: PathLike, fmt: str, bad_bytes: BadBytes) -> tuple[int, dict[str, str]]:
    types: dict[str, set[str]] = {}
    rows = 0
    for row in iter_rows(path, bad_bytes=bad_bytes):
        rows += 1
        if rows > 10_000:  # enough to know the schema; counting rows needs no type detection
            continue
        for key, value in row.fields.items():
            name = _csv_type(value) if fmt in ("csv", "tsv") and isinstance(value, str) else _type_name(value)
            types.setdefault(key, set()).add(name)
    return rows, {k: "|".join(sorted(v)) for k, v in types.items()}


def _from_licence_file(folder: Path) -> tuple[str, str] | None:
    for name in _LICENCE_FILES:
        candidate = folder / name
        if candidate.is_file():
            spdx = identify_licence_text(candidate.read_text("utf-8", errors="replace")[:20_000])
            return (spdx or "unknown"), f"licence file {candidate}"
    readme = folder / "README.md"
    if readme.is_file():  # a Hugging Face dataset card declares its licence in the YAML header
        head = readme.read_text("utf-8", errors="replace")[:5_000]
        if head.startswith("---") and (m := _README_LICENCE.search(head.split("---", 2)[1] if head.count("---")
                                                                  >= 2 else "")):
            return normalize_licence(m.group(1)), f"dataset card {readme}"
    return None


def _dist_licence(meta_path: Path) -> str | None:
    meta = HeaderParser().parsestr(meta_path.read_text("utf-8", errors="replace"))
    expression = meta.get("License-Expression")
    if expression:
        return normalize_licence(expression)
    licence = meta.get("License")
    if licence and len(licence) < 60 and "\n" not in licence.strip():
        return normalize_licence(licence)
    for classifier in meta.get_all("Classifier") or []:
        if classifier.startswith("License ::") and classifier.split("::")[-1].strip() != "OSI Approved":
            return normalize_licence(classifier)
    return None


def _from_package(path: Path) -> tuple[str, str] | None:
    """The licence of the installed distribution that owns ``path`` (a file inside site-packages)."""
    for parent in path.parents:
        if parent.name not in ("site-packages", "dist-packages"):
            continue
        top = path.relative_to(parent).parts[0]
        for info in parent.glob("*.dist-info"):
            top_level = info / "top_level.txt"
            owns = top_level.is_file() and top in top_level.read_text().split()
            if not owns:
                record = info / "RECORD"
                owns = record.is_file() and f"\n{top}/" in "\n" + record.read_text(errors="replace")
            if owns and (info / "METADATA").is_file():
                found = _dist_licence(info / "METADATA")
                return (found or "unknown"), f"package metadata {info.name.removesuffix('.dist-info')}"
        return None
    return None


def detect_licence(path: PathLike, max_levels: int = 4) -> tuple[str, str]:
    """(SPDX id or 'unknown', where it was found) for a data file: a licence file or dataset card in its
    folder or up to ``max_levels`` above, else the metadata of the installed package that owns it."""
    p = Path(path).resolve()
    for level, folder in enumerate(p.parents):
        if level > max_levels or folder.name in ("site-packages", "dist-packages"):
            break
        found = _from_licence_file(folder)
        if found:
            return found
    return _from_package(p) or ("unknown", "not found")


def build_manifest(
    path: PathLike,
    *,
    licence: str | None = None,
    source: str | None = None,
    transformations: list[dict[str, Any]] | None = None,
    bad_bytes: BadBytes = "error",
) -> FileManifest:
    """The manifest of one data file; ``licence`` (an SPDX id) overrides detection."""
    p = Path(path)
    fmt = detect_format(p)
    rows, schema = _schema(p, fmt, bad_bytes)
    if licence:
        spdx, licence_source = normalize_licence(licence), "declared"
    else:
        spdx, licence_source = detect_licence(p)
    if spdx == "unknown":
        log.warning("%s: no licence declared or found; declare one (an SPDX id)", p)
    return FileManifest(
        path=str(p), sha256=sha256_file(p), bytes=p.stat().st_size, rows=rows, format=fmt, schema=schema,
        licence=spdx, licence_source=licence_source, source=source or str(p.resolve()),
        transformations=list(transformations or []),
    )
