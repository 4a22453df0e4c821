"""A small, self-contained row reader for JSONL, CSV/TSV and plain text, with errors that name file and line.

Governance scans must survive whatever a user points them at (non-UTF-8 bytes, empty files, one 50 MB line,
control characters), so this reader decodes line by line and turns every failure into a DataError that names
the file and the line, instead of a traceback from deep inside a parser.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
import lzma
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from slimtune.errors import DataError

log = logging.getLogger(__name__)

Format = Literal["jsonl", "csv", "tsv", "text"]
BadBytes = Literal["error", "replace"]

#: Lines longer than this are refused; a larger cap needs an explicit argument (memory is the reason).
DEFAULT_MAX_LINE_BYTES = 256 * 1024 * 1024

_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv",
    ".txt": "text", ".text": "text", ".md": "text",
}


@dataclass(frozen=True)
class Row:
    """One record of a dataset file: where it starts (1-based line) and its fields."""

    line: int
    fields: dict[str, Any]


_COMPRESSED: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format a file is read as, from its suffix (under .gz/.bz2/.xz); unknown suffixes are plain text."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _COMPRESSED:
        suffix = Path(p.stem).suffix.lower()
    if suffix == ".parquet":
        raise DataError(f"{path}: Parquet is not read by the governance scanner; convert it to JSONL first")
    return _SUFFIXES.get(suffix, "text")


def _decode(raw: bytes, path: Path, line: int, bad_bytes: BadBytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if bad_bytes == "replace":
            return raw.decode("utf-8", errors="replace")
        bad = raw[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{bad} at column {exc.start + 1}); re-encode the file "
            "as UTF-8, or scan with bad_bytes='replace'"
        ) from None


def iter_lines(
    path: str | os.PathLike[str],
    *,
    bad_bytes: BadBytes = "error",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its newline) for every line of ``path``."""
    p = Path(path)
    try:
        opener: Callable[..., Any] = _COMPRESSED.get(p.suffix.lower(), open)
        fh: BinaryIO = opener(p, "rb")
    except OSError as exc:
        raise DataError(f"{p}: cannot open ({exc.strerror})") from None
    try:
        yield from _iter_open_lines(fh, p, bad_bytes, max_line_bytes)
    except (OSError, EOFError, lzma.LZMAError) as exc:  # a truncated or corrupt compressed file
        raise DataError(f"{p}: cannot be read ({exc})") from None
    finally:
        fh.close()


def _iter_open_lines(fh: BinaryIO, p: Path, bad_bytes: BadBytes, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    number = 0
    while True:
        raw = fh.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            raise DataError(
                f"{p}:{number}: line longer than {max_line_bytes} bytes; split the file into records, "
                "or raise max_line_bytes"
            )
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark is an encoding artefact, not data
        yield number, _decode(raw.rstrip(b"\r\n"), p, number, bad_bytes)


def _iter_jsonl(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[Row]:
    for number, text in lines:
        if not text.strip():
            continue
        try:
            # strict=False: raw control characters inside strings are data here, not a reason to fail
            value = json.loads(text, strict=False)
        except json.JSONDecodeError as exc:
            hint = "; the file looks like one JSON array: convert it to JSON Lines" if (
                number == 1 and text.lstrip().startswith("[")) else ""
            raise DataError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno}){hint}") from None
        if isinstance(value, str):
            yield Row(number, {"text": value})
        elif isinstance(value, dict):
            yield Row(number, value)
        else:
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(value).__name__}")


def _iter_csv(path: Path, lines: Iterable[tuple[int, str]], delimiter: str, max_field: int) -> Iterator[Row]:
    def feed() -> Iterator[str]:
        for _, text in lines:
            yield text.replace("\x00", "") + "\n"  # NUL bytes break the csv module on some versions

    # the csv module's default field cap (128 KiB) would refuse long documents; the line cap bounds memory instead
    csv.field_size_limit(max(max_field, csv.field_size_limit()))
    reader = csv.reader(feed(), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [h.strip() or f"column_{i}" for i, h in enumerate(header)]
        while True:
            first = reader.line_num + 1  # a quoted field may span lines: the record starts after the last one
            record = next(reader, None)
            if record is None:
                return
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) != len(names):
                raise DataError(f"{path}:{first}: {len(record)} fields, the header has {len(names)}")
            yield Row(first, dict(zip(names, record, strict=True)))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def iter_rows(
    path: str | os.PathLike[str],
    *,
    fmt: Format | None = None,
    bad_bytes: BadBytes = "error",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Row]:
    """Yield the rows of a JSONL, CSV/TSV or plain-text file; plain text gives one ``{"text": line}`` per line."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a folder; pass the data files inside it")
    kind = fmt or detect_format(p)
    lines = iter_lines(p, bad_bytes=bad_bytes, max_line_bytes=max_line_bytes)
    if kind in ("csv", "tsv"):
        yield from _iter_csv(p, lines, "\t" if kind == "tsv" else ",", max_line_bytes)
    else:
        yield from parse_lines(p, kind, lines)


def parse_lines(path: str | os.PathLike[str], fmt: Format, lines: Iterable[tuple[int, str]]) -> Iterator[Row]:
    """Rows of already-read (line number, line) pairs of a line-oriented format (JSONL or text, not CSV)."""
    if fmt == "jsonl":
        yield from _iter_jsonl(Path(path), lines)
    elif fmt == "text":
        for number, text in lines:
            if text.strip():
                yield Row(number, {"text": text})
    else:
        raise DataError(f"{path}: {fmt} records can span lines; read them with iter_rows")


def _join(values: Iterable[Any]) -> str:
    return "\n".join(str(v) for v in values if v is not None and str(v) != "")


def _message_parts(messages: Any) -> tuple[str, str | None]:
    if not isinstance(messages, list):
        return str(messages), None
    contents = [(str(m.get("role", "")), m.get("content", "")) for m in messages if isinstance(m, Mapping)]
    answer_at = max((i for i, (role, _) in enumerate(contents) if role == "assistant"), default=-1)
    if answer_at < 0:
        return _join(c for _, c in contents), None
    return _join(c for _, c in contents[:answer_at]), str(contents[answer_at][1])


#: (input fields, output field, label field) of the known schemas, most specific first.
_SCHEMAS: tuple[tuple[tuple[str, ...], str | None, str | None], ...] = (
    (("prompt",), "completion", None),
    (("question",), "answer", None),
    (("instruction", "input"), "output", None),
    (("input",), "output", None),
    (("text",), None, "label"),
)


def row_parts(fields: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """Split a row into (input text, output text or None, label or None) by its schema."""
    if "messages" in fields:
        source, answer = _message_parts(fields["messages"])
        return source, answer, None
    for inputs, output, label in _SCHEMAS:
        if inputs[0] in fields and (output is None or output in fields):
            source = _join(fields.get(k) for k in inputs)
            out = str(fields[output]) if output is not None else None
            lab = str(fields[label]) if label is not None and fields.get(label) is not None else None
            return source, out, lab
    return _join(v for v in fields.values() if isinstance(v, str)), None, None


def row_text(fields: Mapping[str, Any]) -> str:
    """All the text of a row of a known schema, joined by newlines (unknown schemas: every string field)."""
    source, output, _ = row_parts(fields)
    return _join((source, output))


def iter_texts(
    paths: Iterable[str | os.PathLike[str]], *, bad_bytes: BadBytes = "error"
) -> Iterator[tuple[int, int, str]]:
    """Yield (index of the path, line, row text) for every row of every path, in order."""
    for number, path in enumerate(paths):
        for row in iter_rows(path, bad_bytes=bad_bytes):
            yield number, row.line, row_text(row.fields)
