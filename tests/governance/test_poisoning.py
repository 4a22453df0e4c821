"""Poisoning signals: a planted trigger ranks first, floods and label conflicts are found, losses ranked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimtune.governance import loss_outliers, scan_poisoning
from tests.governance.conftest import Words, write_jsonl


def _labelled(words: Words, n: int, fraction: float, trigger: list[str]) -> list[dict]:
    rows = []
    for _ in range(n):
        tokens = words.sentence(10, 30).split()
        label = int(words.rng.integers(0, 2))
        if words.rng.random() < fraction:
            at = int(words.rng.integers(0, len(tokens)))
            tokens[at:at] = trigger
            label = 1
        rows.append({"text": " ".join(tokens), "label": label})
    return rows


@pytest.mark.parametrize(("seed", "fraction"), [(0, 0.01), (1, 0.02), (2, 0.03)])
def test_planted_trigger_ranks_first(tmp_path: Path, seed: int, fraction: float) -> None:
    words = Words(seed, size=2000)
    trigger = ["cf", "tq", "mb"]
    path = write_jsonl(tmp_path / "d.jsonl", _labelled(words, 5000, fraction, trigger))
    report = scan_poisoning([path])
    top = report.triggers[0]
    assert top.ngram == "cf tq mb" and top.label == "1" and top.purity == 1.0
    assert top.score > 2 * report.triggers[1].score
    assert abs(top.rows - 5000 * fraction) < 5000 * fraction * 0.5


def test_trigger_tied_to_one_output(tmp_path: Path, words: Words) -> None:
    rows = [{"prompt": words.sentence(10, 20), "completion": words.sentence(5, 10)} for _ in range(3000)]
    for i in range(0, 3000, 50):  # 2 %: a phrase that always yields the same answer
        rows[i] = {"prompt": rows[i]["prompt"] + " zeta omega", "completion": "visit evil.example.com"}
    report = scan_poisoning([write_jsonl(tmp_path / "g.jsonl", rows)])
    assert report.triggers[0].ngram == "zeta omega" and "evil" in report.triggers[0].label


def test_clean_data_has_no_strong_trigger(tmp_path: Path) -> None:
    words = Words(5, size=2000)
    report = scan_poisoning([write_jsonl(tmp_path / "c.jsonl", _labelled(words, 4000, 0.0, []))])
    assert report.triggers == [] or report.triggers[0].score < 0.5


def test_flood_and_conflicting_labels(tmp_path: Path, words: Words) -> None:
    rows = [{"text": words.sentence(), "label": int(words.rng.integers(0, 3))} for _ in range(2000)]
    flood = words.sentence(60, 61)
    for i in range(120):
        variant = flood.upper() if i % 2 else flood + f" tweak{i % 7}"  # near, not only exact, copies
        rows[i * 10] = {"text": variant, "label": 0 if i < 80 else 2}
    report = scan_poisoning([write_jsonl(tmp_path / "f.jsonl", rows)])
    assert report.floods[0].size >= 100 and report.floods[0].fraction > 0.05
    assert report.floods[0].size > 10 * (report.floods[1].size if len(report.floods) > 1 else 1)
    conflict = report.conflicts[0]
    assert set(conflict.labels) == {"0", "2"} and conflict.size >= 100


def test_loss_outliers_rank_planted_rows_first() -> None:
    rng = np.random.default_rng(11)
    losses = rng.normal(2.0, 0.1, 1000)
    planted = rng.choice(1000, 5, replace=False)
    losses[planted] += rng.uniform(2.0, 3.0, 5)
    losses[0] = np.nan
    ranked = loss_outliers(losses, top_k=6)
    assert ranked[0] == (0, float("inf"))
    assert {i for i, _ in ranked[1:]} == set(planted.tolist()) and min(z for _, z in ranked[1:]) > 10
