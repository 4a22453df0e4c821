"""Readers: every format, bad rows reported with file and line, good rows kept, hopeless files refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from slimtune.data.loaders import detect_format, file_sha256, load_rows, read_csv, read_jsonl, read_text
from slimtune.errors import DataError

from .conftest import write_jsonl


def _lines(result) -> list[int]:
    return [r.source.line for r in result.rows]


def test_jsonl_bad_rows_reported_with_lines_and_good_rows_kept(tmp_path: Path, caplog) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"text": "the cat sat"},           # 1
        '{"text": "unterminated',          # 2 invalid JSON
        "",                                # 3 blank: skipped, not bad
        "[1, 2]",                          # 4 not an object
        {"text": "the dog sat"},           # 5
    ])
    with open(path, "ab") as fh:
        fh.write(b'{"text": "caf\xe9 latin-1"}\n')  # 6 not UTF-8
        fh.write(b'{"text": "ok again"}\n')         # 7
    with caplog.at_level(logging.WARNING, logger="slimtune.data"):
        result = load_rows(path)
    assert _lines(result) == [1, 5, 7]
    assert [r.data["text"] for r in result.rows] == ["the cat sat", "the dog sat", "ok again"]
    assert [(b.path, b.line) for b in result.bad_rows] == [(str(path), 2), (str(path), 4), (str(path), 6)]
    reasons = [b.reason for b in result.bad_rows]
    assert "invalid JSON" in reasons[0]
    assert "expected a JSON object, got list" in reasons[1]
    assert "not valid UTF-8" in reasons[2] and "0xe9" in reasons[2]
    assert f"{path}:2" in caplog.text and f"{path}:6" in caplog.text
    assert result.files[str(path)] == file_sha256(path)


def test_file_of_only_bad_rows_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["{nope", "[]"])
    with pytest.raises(DataError, match=r"bad\.jsonl.*all 2 rows are bad.*line 1"):
        load_rows(path)


def test_empty_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl.*empty"):
        load_rows(path)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_rows(tmp_path / "nope.jsonl")
    odd = tmp_path / "data.xyz"
    odd.write_text("x")
    with pytest.raises(DataError, match=r"\.xyz|extension"):
        load_rows(odd)


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"text": "a"}, 3, {"text": "b"}]))
    result = load_rows(path)
    assert _lines(result) == [1, 3]
    assert result.bad_rows[0].line == 2


def test_csv_line_numbers_field_counts_and_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_bytes(
        b"review,label\n"                    # 1 header
        b"great film,fresh\n"                # 2
        b'"two\nline review",rotten\n'       # 3-4 one record over two lines
        b"too,many,fields\n"                 # 5
        b"lonely\n"                          # 6 too few
        b"caf\xe9 bad bytes,fresh\n"         # 7 not UTF-8
        b"awful,rotten\n"                    # 8
    )
    result = read_csv(str(path))
    assert _lines(result) == [2, 3, 8]
    assert result.rows[1].data == {"review": "two\nline review", "label": "rotten"}
    assert [(b.line, b.reason) for b in result.bad_rows] == [
        (5, "expected 2 fields, got 3"), (6, "expected 2 fields, got 1"), (7, "not valid UTF-8")]


def test_tsv(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\nhello there\t1\n")
    assert load_rows(path).rows[0].data == {"text": "hello there", "label": "1"}


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2", "p3"], "completion": ["c1", "c2", "c3"]}), path)
    result = load_rows(path)
    assert [r.data["completion"] for r in result.rows] == ["c1", "c2", "c3"]
    assert _lines(result) == [1, 2, 3]


def test_corrupt_parquet_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken\.parquet"):
        load_rows(path)


def test_text_modes(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(b"first line\nsecond line\n\nthird \xff line\n\n\nfourth\n")
    lines = read_text(str(path), "lines")
    assert [r.data["text"] for r in lines.rows] == ["first line", "second line", "fourth"]
    assert _lines(lines) == [1, 2, 7]
    assert [b.line for b in lines.bad_rows] == [4]
    paragraphs = read_text(str(path), "paragraphs")
    assert [r.data["text"] for r in paragraphs.rows] == ["first line\nsecond line", "fourth"]
    assert _lines(paragraphs) == [1, 7]
    whole = read_text(str(path), "file")
    assert whole.rows == [] and whole.bad_rows[0].line == 1  # the whole file is one document, not UTF-8
    good = tmp_path / "good.txt"
    good.write_text("a\nb\n")
    assert [r.data["text"] for r in read_text(str(good), "file").rows] == ["a\nb"]


def test_hf_save_to_disk_and_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["t1", "t2"], "label": [0, 1]}),
        "test": datasets.Dataset.from_dict({"text": ["e1"], "label": [1]}),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    assert detect_format(tmp_path / "dd") == "hf_disk"
    train = load_rows(tmp_path / "dd")
    assert [r.data["text"] for r in train.rows] == ["t1", "t2"]
    assert train.rows[0].source.path.endswith("[train]")
    test = load_rows(tmp_path / "dd", split="test")
    assert [r.data for r in test.rows] == [{"text": "e1", "label": 1}]
    from slimtune.errors import ConfigError

    with pytest.raises(ConfigError, match="validation"):
        load_rows(tmp_path / "dd", split="validation")


def test_hf_files_builder(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}, {"text": "y"}])
    result = load_rows(path, format="hf_files")
    assert [r.data["text"] for r in result.rows] == ["x", "y"]


def test_glob_and_several_files_keep_their_sources(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a1"}, {"text": "a2"}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b1"}])
    result = load_rows(str(tmp_path / "*.jsonl"))
    assert [(Path(r.source.path).name, r.source.line) for r in result.rows] == [
        ("a.jsonl", 1), ("a.jsonl", 2), ("b.jsonl", 1)]
    assert len(result.files) == 2
    with pytest.raises(DataError, match="matched no file"):
        load_rows(str(tmp_path / "*.parquet"))


def test_read_jsonl_direct_keeps_unicode(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "naïve café ☕"}])
    assert read_jsonl(str(path)).rows[0].data["text"] == "naïve café ☕"
