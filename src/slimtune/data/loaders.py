"""Readers for local data files (JSONL, JSON, CSV/TSV, Parquet, plain text) and Hugging Face datasets.

Every reader returns raw rows tagged with their file and line, and collects the rows it cannot read as
`BadRow`s instead of stopping; a file that yields no usable row at all is a `DataError` naming it.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from slimtune.errors import ConfigError, DataError

from .records import BadRow, LoadResult, Row, Source, log_bad_rows

FileFormat = Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "text", "hf_disk", "hf_files"]
TextMode = Literal["lines", "paragraphs", "file"]

_EXTENSIONS: dict[str, FileFormat] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".md": "text", ".text": "text",
}
_HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, or of a folder's files in sorted order (for datasets saved to disk)."""
    digest = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            digest.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def detect_format(path: str | Path) -> FileFormat:
    """The file format from a path: a folder saved by `datasets` is 'hf_disk', files go by extension."""
    p = Path(path)
    if p.is_dir():
        if any((p / marker).exists() for marker in _HF_DISK_MARKERS):
            return "hf_disk"
        raise DataError(f"folder {str(p)!r} is not a dataset saved with save_to_disk "
                        f"(no {_HF_DISK_MARKERS[0]})")
    fmt = _EXTENSIONS.get(p.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise DataError(f"cannot tell the format of {str(p)!r} from its extension; known: {known}; "
                        "or pass format=")
    return fmt


def expand_paths(paths: str | Path | Sequence[str | Path]) -> list[str]:
    """One path, a list of paths, or glob patterns, to a sorted list of existing paths."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[str] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matched = sorted(glob.glob(text, recursive=True))
            if not matched:
                raise DataError(f"pattern {text!r} matched no file")
            out.extend(matched)
        elif not os.path.exists(text):
            raise DataError(f"data file {text!r} does not exist")
        else:
            out.append(text)
    return out


def _decode(raw: bytes, path: str, line: int) -> str | BadRow:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRow(path, line, f"not valid UTF-8: byte {raw[exc.start]:#04x} at column {exc.start + 1}")


def _json_row(text: str, path: str, line: int) -> Row | BadRow:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadRow(path, line, f"invalid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(value, dict):
        return BadRow(path, line, f"expected a JSON object, got {type(value).__name__}")
    return Row(value, Source(path, line))


def read_jsonl(path: str) -> LoadResult:
    """Read one JSON object per line; blank lines are skipped, everything else unusable is a BadRow."""
    result = LoadResult()
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            text = _decode(raw, path, line_no)
            item = text if isinstance(text, BadRow) else _json_row(text, path, line_no)
            (result.bad_rows if isinstance(item, BadRow) else result.rows).append(item)  # type: ignore[arg-type]
    return result


def read_json(path: str) -> LoadResult:
    """Read a JSON file holding an array of objects (records numbered from 1); otherwise read it as JSONL."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith(b"["):
        return read_jsonl(path)
    text = _decode(Path(path).read_bytes(), path, 1)
    if isinstance(text, BadRow):
        return LoadResult(bad_rows=[text])
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        return LoadResult(bad_rows=[BadRow(path, exc.lineno, f"invalid JSON: {exc.msg}")])
    return _from_records(records, path)


def _from_records(records: Iterable[Any], path: str) -> LoadResult:
    result = LoadResult()
    for index, value in enumerate(records, start=1):
        if isinstance(value, dict):
            result.rows.append(Row(dict(value), Source(path, index)))
        else:
            result.bad_rows.append(BadRow(path, index, f"expected an object, got {type(value).__name__}"))
    return result


def _has_surrogates(values: Iterable[Any]) -> bool:
    return any(isinstance(v, str) and any("\udc80" <= ch <= "\udcff" for ch in v) for v in values)


def _csv_row(record: dict[Any, Any], n_fields: int, path: str, line: int) -> Row | BadRow:
    if None in record or any(v is None for v in record.values()):
        got = n_fields + len(record.get(None) or []) - sum(v is None for v in record.values())
        return BadRow(path, line, f"expected {n_fields} fields, got {got}")
    if _has_surrogates(record.values()):
        return BadRow(path, line, "not valid UTF-8")
    return Row(dict(record), Source(path, line))


def read_csv(path: str, delimiter: str = ",") -> LoadResult:
    """Read a CSV/TSV file with a header row; a record's line is the line it starts on."""
    result = LoadResult()
    # surrogateescape keeps undecodable bytes visible per record instead of failing the whole file
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        fieldnames = reader.fieldnames or []
        if _has_surrogates(fieldnames):
            raise DataError(f"{path}:1: the header row is not valid UTF-8")
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                result.bad_rows.append(BadRow(path, start, f"unreadable CSV record: {exc}"))
                continue
            item = _csv_row(record, len(fieldnames), path, start)
            (result.bad_rows if isinstance(item, BadRow) else result.rows).append(item)  # type: ignore[arg-type]
    return result


def read_parquet(path: str) -> LoadResult:
    """Read a Parquet file with pyarrow; rows are numbered from 1 in file order."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow comes with datasets
        raise DataError(f"reading {path!r} needs pyarrow: pip install 'slimtune[data]'") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path!r} is not a readable Parquet file: {exc}") from exc
    return _from_records(table.to_pylist(), path)


def _text_blocks(lines: list[bytes], mode: TextMode) -> Iterator[tuple[int, bytes]]:
    if mode == "lines":
        yield from ((n, raw) for n, raw in enumerate(lines, start=1) if raw.strip())
        return
    start, block = 0, []
    for n, raw in enumerate(lines, start=1):
        if raw.strip():
            start = start or n
            block.append(raw)
        elif block:
            yield start, b"".join(block)
            start, block = 0, []
    if block:
        yield start, b"".join(block)


def read_text(path: str, mode: TextMode = "lines") -> LoadResult:
    """Plain text as {"text"} rows: one per non-blank line, per blank-line separated paragraph, or per file.

    Lines are numbered from 1; a paragraph carries the line it starts on.
    """
    data = Path(path).read_bytes()
    result = LoadResult()
    if mode == "file":
        blocks: Iterable[tuple[int, bytes]] = [(1, data)] if data.strip() else []
    else:
        blocks = _text_blocks(data.splitlines(keepends=True), mode)
    for line_no, raw in blocks:
        text = _decode(raw, path, line_no)
        if isinstance(text, BadRow):
            result.bad_rows.append(text)
        else:
            result.rows.append(Row({"text": text.rstrip("\r\n") if mode == "lines" else text.strip()},
                                   Source(path, line_no)))
    return result


def _pick_split(dataset: Any, split: str | None, where: str) -> tuple[Any, str | None]:
    if not hasattr(dataset, "keys"):  # a single Dataset
        return dataset, split
    splits = list(dataset.keys())
    if split is None:
        split = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
        if split is None:
            raise ConfigError(f"{where} holds splits {splits}; choose one with split=")
    if split not in dataset:
        raise ConfigError(f"split {split!r} not in {where}; it holds {splits}")
    return dataset[split], split


def read_hf_disk(path: str, split: str | None = None) -> LoadResult:
    """A Dataset or DatasetDict saved with `save_to_disk`; rows are numbered from 1 within the split."""
    import datasets

    dataset, split = _pick_split(datasets.load_from_disk(path), split, path)
    where = f"{path}[{split}]" if split else path
    return _from_records(dataset, where)


def read_hf_files(paths: list[str], builder: str = "json", split: str | None = None) -> LoadResult:
    """Local files through `datasets.load_dataset(builder, data_files=...)` (offline).

    `datasets` stops on the first malformed row and does not say which file a row came from, so rows carry
    the first path and a running record number; prefer the plain readers when per-line reports matter.
    """
    import datasets

    try:
        loaded = datasets.load_dataset(builder, data_files=paths)
    except Exception as exc:  # datasets wraps parser errors in its own types
        raise DataError(f"datasets could not read {paths}: {exc}") from exc
    dataset, _ = _pick_split(loaded, split, f"data files {paths}")
    return _from_records(dataset, paths[0])


def _read_one(path: str, fmt: FileFormat, text_mode: TextMode, split: str | None) -> LoadResult:
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {
        "jsonl": lambda: read_jsonl(path), "json": lambda: read_json(path),
        "csv": lambda: read_csv(path), "tsv": lambda: read_csv(path, delimiter="\t"),
        "parquet": lambda: read_parquet(path), "text": lambda: read_text(path, text_mode),
        "hf_disk": lambda: read_hf_disk(path, split), "hf_files": lambda: read_hf_files([path], split=split),
    }
    if fmt not in readers:
        raise ConfigError(f"format {fmt!r} is not one of {sorted(readers)}")
    result = readers[fmt]()
    result.files[path] = file_sha256(path)
    return result


def check_usable(result: LoadResult, path: str) -> None:
    """Raise DataError naming `path` when it gave no usable row."""
    if result.rows:
        return
    if not result.bad_rows:
        raise DataError(f"data file {path!r} is empty")
    first = result.bad_rows[0]
    raise DataError(f"data file {path!r} has no usable row: all {len(result.bad_rows)} rows are bad "
                    f"(first: line {first.line}: {first.reason})")


def load_rows(
    paths: str | Path | Sequence[str | Path],
    format: FileFormat = "auto",
    text_mode: TextMode = "lines",
    split: str | None = None,
) -> LoadResult:
    """Read every file in `paths` (paths or glob patterns); bad rows are logged and collected, not raised."""
    result = LoadResult()
    for path in expand_paths(paths):
        one = _read_one(path, format, text_mode, split)
        log_bad_rows(one.bad_rows)
        check_usable(one, path)
        result.extend(one)
    return result


__all__ = [
    "FileFormat", "TextMode", "check_usable", "detect_format", "expand_paths", "file_sha256", "load_rows",
    "read_csv", "read_hf_disk", "read_hf_files", "read_json", "read_jsonl", "read_parquet", "read_text",
]
