"""Planted contamination (copies, small edits, reordering, embedded spans) is found; clean data gives ~0."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from slimtune.errors import DataError
from slimtune.governance import ContaminationConfig, decontaminate, scan_contamination, split_overlap
from slimtune.governance import hashing as H
from tests.governance.conftest import Words, write_jsonl


def _edit(text: str, rng: np.random.Generator, n: int = 1) -> str:
    words = text.split()
    for pos in rng.choice(len(words), n, replace=False):
        words[pos] = "changed"
    return " ".join(words)


def _reorder(sentences: list[str]) -> str:
    return " ".join(reversed(sentences))


@pytest.fixture
def planted(tmp_path: Path, words: Words) -> tuple[Path, Path, dict[str, set[int]]]:
    """Train/eval files with known eval lines planted by kind; eval rows are three 'sentences' long."""
    evals = [[words.sentence(14, 18) for _ in range(3)] for _ in range(200)]
    train = words.sentences(3000, 20, 60)
    kinds = {"copy": set(range(0, 10)), "edit": set(range(10, 20)), "reorder": set(range(20, 30)),
             "span": set(range(30, 40))}
    for i in kinds["copy"]:
        train[i * 7] = " ".join(evals[i]).upper() + " !!"
    for i in kinds["edit"]:
        train[i * 7] = _edit(" ".join(evals[i]), words.rng, 2)
    for i in kinds["reorder"]:
        train[i * 7] = _reorder(evals[i])
    for i in kinds["span"]:
        train[i * 7] = words.sentence() + " " + evals[i][1] + " " + words.sentence()
    eval_path = write_jsonl(tmp_path / "eval.jsonl", [{"question": " ".join(e[:2]), "answer": e[2]} for e in evals])
    return write_jsonl(tmp_path / "train.jsonl", train), eval_path, kinds


def _found(report) -> set[int]:  # zero-based eval rows (one row per line in these files)
    return {line - 1 for lines in report.evals[0].lines.values() for line in lines}


def test_planted_rows_are_found_and_clean_rows_are_not(planted) -> None:
    train, ev, kinds = planted
    report = scan_contamination([train], {"eval": [ev]})
    found = _found(report)
    for kind, rows in kinds.items():
        assert rows <= found, f"{kind}: missed {sorted(rows - found)}"
    assert found <= set().union(*kinds.values()), f"false positives: {sorted(found - set().union(*kinds.values()))}"
    ev_report = report.evals[0]
    assert ev_report.fraction == pytest.approx(40 / 200)
    assert ev_report.by_kind["exact"] == 10 and sum(ev_report.by_kind.values()) == 40
    assert report.flagged_rows == 40


def test_clean_data_gives_zero(tmp_path: Path, words: Words) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", words.sentences(2000))
    ev = write_jsonl(tmp_path / "e.jsonl", words.sentences(300))
    report = scan_contamination([train], {"e": [ev]})
    assert report.evals[0].contaminated == 0 and report.flagged_rows == 0 and report.train_rows == 2000


def test_workers_and_chunks_do_not_change_the_result(planted) -> None:
    train, ev, _ = planted
    one = scan_contamination([train], {"e": [ev]})
    many = scan_contamination([train], {"e": [ev]}, ContaminationConfig(workers=2, chunk_rows=700))
    assert one.flagged == many.flagged and one.evals[0].lines == many.evals[0].lines
    chars = scan_contamination([train], {"e": [ev]}, ContaminationConfig(unit="char", chunk_rows=1000))
    assert _found(one) <= _found(chars) | {i for i in range(10, 20)}


def test_decontaminate_writes_a_clean_copy(planted, tmp_path: Path) -> None:
    train, ev, _ = planted
    report = scan_contamination([train], {"e": [ev]})
    out = tmp_path / "clean" / "train.jsonl"
    record = decontaminate(train, report, out)
    assert record["rows_dropped"] == 40 and record["rows_kept"] == 3000 - 40
    again = scan_contamination([out], {"e": [ev]})
    assert again.evals[0].contaminated == 0
    kept = out.read_text().splitlines()
    assert kept[0] == train.read_text().splitlines()[1]  # line 1 was planted; line 2 is copied verbatim
    assert not list(out.parent.glob(".*.tmp"))


def test_split_overlap_inside_one_dataset(tmp_path: Path, words: Words) -> None:
    train_rows = words.sentences(500)
    test_rows = words.sentences(100)
    test_rows[:5] = train_rows[:5]
    splits = {"train": [write_jsonl(tmp_path / "train.jsonl", train_rows)],
              "test": [write_jsonl(tmp_path / "test.jsonl", test_rows)]}
    (overlap,) = split_overlap(splits)
    assert overlap.contaminated == 5 and overlap.by_kind["exact"] == 5


def test_ngram_hash_is_position_and_batch_independent(words: Words) -> None:
    text = words.sentence(30, 31)
    inside = "prefix words here " + text + " and after"
    a, _ = H.ngram_hashes(H.encode([text]), 13)
    b, _ = H.ngram_hashes(H.encode(["unrelated row", inside]), 13)
    assert set(a.tolist()) <= set(b.tolist()) and len(set(a.tolist())) == 18
    whole = H.whole_row_hashes(H.encode([text[:0] + " ".join(text.split()[:9])]), np.array([0]))
    nine, _ = H.ngram_hashes(H.encode([text]), 9)
    assert whole[0] == nine[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minhash_estimates_jaccard(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, 400).astype(np.uint64)
    other = base.copy()
    other[: int(rng.integers(50, 300))] = rng.integers(0, 2**63, 1).astype(np.uint64) + np.arange(400)[:1].astype(
        np.uint64)
    other = np.unique(np.concatenate([other, rng.integers(0, 2**63, 50).astype(np.uint64)]))
    true = H.exact_jaccard(base, other)
    hashes = np.concatenate([base, other])
    rows = np.r_[np.zeros(len(base), dtype=np.int64), np.ones(len(other), dtype=np.int64)]
    sig = H.MinHasher(256).signatures(hashes, rows, 2)
    assert abs(float(H.estimated_jaccard(sig[:1], sig[1:])[0]) - true) < 0.1


def test_decontaminate_csv_and_refusals(tmp_path: Path, words: Words) -> None:
    evals = words.sentences(50)
    train = tmp_path / "train.csv"
    rows = [(t, i % 2) for i, t in enumerate(words.sentences(200))]
    rows[3] = (evals[9], 1)
    rows[150] = ("multi\nline " + evals[20], 0)
    with open(train, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    ev = write_jsonl(tmp_path / "e.jsonl", evals)
    report = scan_contamination([train], {"e": [ev]})
    assert report.evals[0].contaminated == 2
    out = tmp_path / "clean.csv"
    record = decontaminate(train, report, out)
    assert record["rows_dropped"] == 2 and scan_contamination([out], {"e": [ev]}).evals[0].contaminated == 0
    with pytest.raises(DataError, match="not among the training files"):
        decontaminate(ev, report, tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="writes a copy"):
        decontaminate(train, report, train)
