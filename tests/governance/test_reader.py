"""Bad input files give clear DataErrors naming file and line, or are handled; never a crash."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import pytest

from slimtune.errors import DataError
from slimtune.governance import build_manifest, scan_dataset
from slimtune.governance.reader import iter_rows, row_parts, row_text


def test_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 latin-1"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid UTF-8 \(byte 0xe9"):
        list(iter_rows(p))
    rows = list(iter_rows(p, bad_bytes="replace"))
    assert [r.line for r in rows] == [1, 2] and "\ufffd" in rows[1].fields["text"]


def test_empty_file_is_handled(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    assert list(iter_rows(p)) == []
    report = scan_dataset([p], against=[p], licences="mit")
    assert report.manifests[0].rows == 0 and report.contamination is not None
    assert report.contamination.evals[0].fraction == 0.0


def test_enormous_line_is_read_or_refused_by_cap(tmp_path: Path) -> None:
    p = tmp_path / "huge.txt"
    big = "word " * (10 * 1024 * 1024)  # one 50 MB line
    p.write_text("short line\n" + big + "\n", encoding="utf-8")
    rows = list(iter_rows(p))
    assert len(rows) == 2 and len(rows[1].fields["text"]) == len(big)
    with pytest.raises(DataError, match=r"huge\.txt:2: line longer than 1000000 bytes"):
        list(iter_rows(p, max_line_bytes=1_000_000))


def test_enormous_line_scans_against_itself(tmp_path: Path) -> None:
    p = tmp_path / "huge.jsonl"
    text = " ".join(f"t{i % 5000}" for i in range(1_000_000))  # one ~7 MB row of 1M words
    p.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    report = scan_dataset([p], against=[p], licences="mit", poisoning=False, pii=False)
    assert report.contamination is not None and report.contamination.evals[0].contaminated == 1


def test_control_characters_are_data(tmp_path: Path) -> None:
    p = tmp_path / "ctrl.jsonl"
    p.write_bytes(b'{"text": "a\x01b\x7f c\x00d"}\n' + json.dumps({"text": "bell \u0007 here"}).encode() + b"\n")
    rows = list(iter_rows(p))
    assert rows[0].fields["text"] == "a\x01b\x7f c\x00d"
    manifest = build_manifest(p, licence="mit")
    assert manifest.rows == 2


@pytest.mark.parametrize(("content", "message"), [
    (b'{"text": "ok"}\n{"text": broken\n', r"x\.jsonl:2: invalid JSON"),
    (b'{"text": "ok"}\n[1, 2]\n', r"x\.jsonl:2: expected a JSON object"),
])
def test_malformed_jsonl(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "x.jsonl"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(iter_rows(p))


def test_csv_records_spanning_lines_keep_their_start_line(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"first\nsecond line",1\nthird,0\n', encoding="utf-8")
    rows = list(iter_rows(p))
    assert [(r.line, r.fields["label"]) for r in rows] == [(2, "1"), (4, "0")]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nonly-one-field\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:2: 1 fields, the header has 2"):
        list(iter_rows(bad))


def test_compressed_and_missing_files(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl.bz2"
    p.write_bytes(bz2.compress(b'{"text": "zipped"}\n'))
    assert [r.fields for r in iter_rows(p)] == [{"text": "zipped"}]
    broken = tmp_path / "t.jsonl.bz2"
    broken.write_bytes(bz2.compress(b'{"text": "zipped"}\n' * 100)[:30])
    with pytest.raises(DataError, match=r"t\.jsonl\.bz2"):
        list(iter_rows(broken))
    with pytest.raises(DataError, match="cannot open"):
        list(iter_rows(tmp_path / "absent.jsonl"))
    with pytest.raises(DataError, match="is a folder"):
        list(iter_rows(tmp_path))


@pytest.mark.parametrize(("fields", "parts"), [
    ({"text": "hello", "label": 1}, ("hello", None, "1")),
    ({"prompt": "p", "completion": "c"}, ("p", "c", None)),
    ({"question": "q", "answer": "a"}, ("q", "a", None)),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                   {"role": "assistant", "content": "r"}]}, ("s\nu", "r", None)),
    ({"title": "t", "body": "b", "n": 3}, ("t\nb", None, None)),
])
def test_row_parts_of_known_schemas(fields: dict, parts: tuple) -> None:
    assert row_parts(fields) == parts
    assert row_text(fields) == "\n".join(x for x in parts[:2] if x)
