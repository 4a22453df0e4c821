"""Data transforms that write a cleaned copy (never edit in place): decontamination (drop rows found in an
evaluation set) and PII redaction. Writes are atomic, and each returns a record for the manifest's list of
transformations.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from slimtune.errors import DataError
from slimtune.governance._atomic import atomic_open
from slimtune.governance.contamination import ContaminationReport
from slimtune.governance.manifest import sha256_file
from slimtune.governance.pii import find_pii, redact_text
from slimtune.governance.reader import BadBytes, detect_format, iter_lines, iter_rows

PathLike = str | os.PathLike[str]


def _same_file(a: Path, b: Path) -> bool:
    return b.exists() and a.resolve() == b.resolve()


def _write_csv(src: Path, dst: Path, rows: Iterable[dict[str, Any]], fmt: str) -> None:
    header = None
    with atomic_open(dst) as fh:
        writer: Any = None
        for fields in rows:
            if writer is None:
                header = list(fields)
                writer = csv.DictWriter(fh, header, delimiter="\t" if fmt == "tsv" else ",")
                writer.writeheader()
            writer.writerow(fields)
        if writer is None:  # no data rows: keep the header line if the source had one
            first = next(iter_lines(src), None)
            if first:
                fh.write(first[1] + "\n")


def _flagged_lines(report: ContaminationReport, src: Path) -> list[int]:
    """The report's flagged lines of ``src``, matched by resolved path (a miss would silently drop nothing)."""
    for name, lines in report.flagged.items():
        if Path(name).resolve() == src.resolve():
            return lines
    raise DataError(f"{src}: not among the training files of this contamination report "
                    f"({', '.join(report.flagged) or 'none'}); scan it first")


def decontaminate(path: PathLike, report: ContaminationReport, out: PathLike, *,
                  bad_bytes: BadBytes = "error") -> dict[str, Any]:
    """Write ``path`` without the rows the report flagged in it, to ``out``; returns the transformation record.

    JSONL and text lines that are kept are copied byte for byte; CSV is rewritten record by record.
    """
    src, dst = Path(path), Path(out)
    if _same_file(src, dst):
        raise DataError(f"{dst}: decontaminate writes a copy; choose an output other than the input")
    drop = set(_flagged_lines(report, src))
    fmt = detect_format(src)
    kept = dropped = 0
    if fmt in ("csv", "tsv"):
        rows = list(iter_rows(src, bad_bytes=bad_bytes))
        keep = [r.fields for r in rows if r.line not in drop]
        kept, dropped = len(keep), len(rows) - len(keep)
        _write_csv(src, dst, keep, fmt)
    else:
        with atomic_open(dst) as fh:
            for number, text in iter_lines(src, bad_bytes=bad_bytes):
                if number in drop:
                    dropped += 1
                    continue
                kept += 1
                fh.write(text + "\n")
    return {"transform": "decontaminate", "input": str(src), "input_sha256": sha256_file(src), "output": str(dst),
            "against": [p for ev in report.evals for p in ev.paths], "rows_dropped": dropped, "rows_kept": kept,
            "config": {"ngram": report.config.ngram, "threshold": report.config.threshold}}


def _redact_value(value: Any, kinds: list[str] | None) -> tuple[Any, int]:
    if isinstance(value, str):
        found = len(find_pii(value, kinds))
        return (redact_text(value, kinds) if found else value), found
    if isinstance(value, list):
        out, total = [], 0
        for v in value:
            new, n = _redact_value(v, kinds)
            out.append(new)
            total += n
        return out, total
    if isinstance(value, dict):
        items, total = {}, 0
        for k, v in value.items():
            items[k], n = _redact_value(v, kinds)
            total += n
        return items, total
    return value, 0


def redact_file(path: PathLike, out: PathLike, *, kinds: Iterable[str] | None = None,
                bad_bytes: BadBytes = "error") -> dict[str, Any]:
    """Write ``path`` with every PII finding replaced by ``[KIND]`` to ``out``; returns the record."""
    src, dst = Path(path), Path(out)
    if _same_file(src, dst):
        raise DataError(f"{dst}: redact writes a copy; choose an output other than the input")
    wanted = list(kinds) if kinds is not None else None
    fmt = detect_format(src)
    total = 0
    if fmt in ("csv", "tsv"):
        rows = []
        for row in iter_rows(src, bad_bytes=bad_bytes):
            fields, n = _redact_value(row.fields, wanted)
            rows.append(fields)
            total += n
        _write_csv(src, dst, rows, fmt)
    else:
        with atomic_open(dst) as fh:
            for row in iter_rows(src, bad_bytes=bad_bytes):
                fields, n = _redact_value(row.fields, wanted)
                total += n
                fh.write((json.dumps(fields, ensure_ascii=False) if fmt == "jsonl" else fields["text"]) + "\n")
    return {"transform": "redact_pii", "input": str(src), "input_sha256": sha256_file(src), "output": str(dst),
            "kinds": wanted or "all", "findings_redacted": total}


__all__ = ["decontaminate", "redact_file"]
