"""Poisoning signals in a training set, reported as ranked scores with examples, never as verdicts:
floods of near duplicates, rare n-grams tied to one label or one output (backdoor trigger candidates),
contradicting labels among near duplicates, and (given per-row losses from a probe training) loss outliers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from slimtune.errors import ConfigError
from slimtune.governance import hashing as H
from slimtune.governance.reader import BadBytes, iter_rows, row_parts

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class PoisoningConfig:
    """What counts as a cluster and a trigger candidate."""

    shingle: int = 5
    """Word shingle length of the near-duplicate MinHash."""
    num_perm: int = 128
    threshold: float = 0.7
    """Estimated Jaccard at or above which two rows join a cluster."""
    max_n: int = 3
    """Longest word n-gram considered as a trigger."""
    min_count: int = 5
    """Rows an n-gram must occur in to be a trigger candidate."""
    max_row_fraction: float = 0.05
    """n-grams in more rows than this are common language, not triggers."""
    top_k: int = 10
    """Entries kept per list."""
    label_field: str | None = None
    """Field holding the label; None uses 'label', else the output (completion, answer, assistant turn)."""
    max_rows: int = 300_000
    """Rows scanned at most; larger files are sampled evenly (the scan holds its rows in memory)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"PoisoningConfig.threshold={self.threshold!r}: expected a value in (0, 1]")
        if self.max_n < 1 or self.min_count < 2:
            raise ConfigError(f"PoisoningConfig: max_n={self.max_n!r} must be >= 1, min_count="
                              f"{self.min_count!r} >= 2")


@dataclass
class Cluster:
    """A group of near-duplicate rows."""

    size: int
    fraction: float
    ratio_to_typical: float
    """Size over the median size of duplicate groups in this dataset (how unusual this flood is)."""
    labels: dict[str, int]
    examples: list[dict[str, Any]]


@dataclass
class Trigger:
    """An n-gram whose rows almost all carry one label (or one output)."""

    ngram: str
    rows: int
    label: str
    purity: float
    base_rate: float
    score: float
    """Lift of the 95 % lower bound of purity over the label's base rate, in [0, 1], times rarity."""
    examples: list[dict[str, Any]]


@dataclass
class PoisoningReport:
    """Ranked poisoning signals of one dataset."""

    rows: int
    sampled_rows: int | None = None
    """Rows actually scanned when the dataset was larger than max_rows (None: all of them)."""
    floods: list[Cluster] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)
    conflicts: list[Cluster] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Rows:
    paths: list[str]
    path_of: list[int]
    lines: list[int]
    inputs: list[str]
    targets: list[str | None]

    def example(self, i: int) -> dict[str, Any]:
        text = self.inputs[i]
        return {"path": self.paths[self.path_of[i]], "line": self.lines[i],
                "text": text if len(text) <= 200 else text[:200] + "...", "target": self.targets[i]}


def _load(paths: Sequence[PathLike], label_field: str | None, bad_bytes: BadBytes) -> _Rows:
    rows = _Rows([str(p) for p in paths], [], [], [], [])
    for path_no, path in enumerate(paths):
        for row in iter_rows(path, bad_bytes=bad_bytes):
            source, output, label = row_parts(row.fields)
            if label_field is not None:
                label = None if row.fields.get(label_field) is None else str(row.fields[label_field])
            rows.path_of.append(path_no)
            rows.lines.append(row.line)
            rows.inputs.append(source)
            rows.targets.append(label if label is not None else (H.normalize(output) if output else None))
    return rows


def _sample(rows: _Rows, size: int) -> _Rows:
    """An even, deterministic sample: every k-th row keeps a trigger's share of rows, unlike a head."""
    keep = np.linspace(0, len(rows.inputs) - 1, size).astype(np.int64)
    return _Rows(rows.paths, [rows.path_of[i] for i in keep], [rows.lines[i] for i in keep],
                 [rows.inputs[i] for i in keep], [rows.targets[i] for i in keep])


def _clusters(rows: _Rows, cfg: PoisoningConfig) -> np.ndarray:
    """Component id per row of the near-duplicate graph (verified LSH edges)."""
    # inputs only: near-duplicate inputs with different labels are exactly the conflicts looked for
    batch = H.encode(rows.inputs)
    hashes, owner = H.shingles(batch, cfg.shingle)
    sig = H.MinHasher(cfg.num_perm).signatures(hashes, owner, len(batch))
    a, b = H.self_pairs(H.band_keys(sig, H.lsh_bands(cfg.num_perm, cfg.threshold)))
    keep = H.estimated_jaccard(sig[a], sig[b]) >= cfg.threshold
    n = len(batch)
    graph = coo_matrix((np.ones(int(keep.sum())), (a[keep], b[keep])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _cluster_lists(rows: _Rows, labels: np.ndarray, cfg: PoisoningConfig) -> tuple[list[Cluster], list[Cluster]]:
    n = len(labels)
    sizes = np.bincount(labels)
    multi = np.flatnonzero(sizes >= 2)
    # the natural duplicate-group size, once there are enough groups to say; else a group of one
    typical = float(np.median(sizes[multi])) if len(multi) >= 10 else 1.0
    members = np.argsort(labels, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)]
    floods: list[Cluster] = []
    conflicts: list[Cluster] = []
    for comp in multi[np.argsort(-sizes[multi], kind="stable")]:
        idx = members[starts[comp] : starts[comp + 1]]
        counts: dict[str, int] = {}
        for i in idx:
            key = str(rows.targets[i])
            counts[key] = counts.get(key, 0) + 1
        cluster = Cluster(int(sizes[comp]), float(sizes[comp] / n), float(sizes[comp] / typical),
                          dict(sorted(counts.items(), key=lambda kv: -kv[1])[:10]),
                          [rows.example(int(i)) for i in idx[:3]])
        if len(floods) < cfg.top_k:
            floods.append(cluster)
        if len([k for k in counts if k != "None"]) >= 2:
            conflicts.append(cluster)
    # contradiction: a big group split between labels outranks a small or lopsided one
    conflicts.sort(key=lambda c: -c.size * (1 - max(c.labels.values()) / c.size))
    return floods, conflicts[: cfg.top_k]


def wilson_lower(successes: np.ndarray, total: np.ndarray, z: float = 1.96) -> np.ndarray:
    """The lower end of the Wilson score interval of a binomial proportion."""
    p = successes / total
    centre = p + z * z / (2 * total)
    spread = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return (centre - spread) / (1 + z * z / total)


def _ngram_rows(batch: H.TokenBatch, max_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (n-gram hash, row, n) triples: an n-gram counts once per row however often it repeats there."""
    grams, owners, ns = [], [], []
    for n in range(1, max_n + 1):
        g, r = H.ngram_hashes(batch, n)
        # rows are < 2**32 in any file this scans, so (hash, row) packs into a structured unique
        pairs = np.unique(np.stack([g, r.astype(np.uint64)], axis=1), axis=0)
        grams.append(pairs[:, 0])
        owners.append(pairs[:, 1].astype(np.int64))
        ns.append(np.full(len(pairs), n, dtype=np.int64))
    return np.concatenate(grams), np.concatenate(owners), np.concatenate(ns)


def _gram_text(text: str, gram: int, n: int) -> str:
    tokens = H.tokenize(text)
    hashes, _ = H.ngram_hashes(H.encode([text]), n)
    where = np.flatnonzero(hashes == np.uint64(gram))
    return " ".join(tokens[int(where[0]) : int(where[0]) + n]) if len(where) else "?"


@dataclass
class _GramStats:
    """Per distinct n-gram: hash, n, rows, majority label and its rows, score; plus the sorted postings."""

    gram: np.ndarray
    n: np.ndarray
    total: np.ndarray
    best: np.ndarray
    label: np.ndarray
    score: np.ndarray
    post_gram: np.ndarray  # all (gram, row) postings sorted by gram
    post_row: np.ndarray


def _gram_stats(rows: _Rows, cfg: PoisoningConfig, label_of: np.ndarray, labelled: np.ndarray,
                base: np.ndarray) -> _GramStats:
    grams, owners, ns = _ngram_rows(H.encode(rows.inputs), cfg.max_n)
    keep = labelled[owners]
    grams, owners, ns = grams[keep], owners[keep], ns[keep]
    order = np.lexsort((label_of[owners], grams))  # rows per (gram, label) and per gram, all by sorting
    g, lab, owners, ns = grams[order], label_of[owners][order], owners[order], ns[order]
    pair_start = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (lab[1:] != lab[:-1])])
    pair_count = np.diff(np.r_[pair_start, len(g)])
    pair_gram = g[pair_start]
    gram_start = np.flatnonzero(np.r_[True, pair_gram[1:] != pair_gram[:-1]])
    total = np.add.reduceat(pair_count, gram_start)
    segment = np.repeat(np.arange(len(gram_start)), np.diff(np.r_[gram_start, len(pair_count)]))
    top = np.lexsort((-pair_count, segment))[gram_start]  # the majority label's pair in each gram's segment
    best, label = pair_count[top], lab[pair_start][top]
    frac = total / int(labelled.sum())
    b = base[label]
    lift = np.clip((wilson_lower(best, total) - b) / np.maximum(1 - b, 1e-9), 0, 1) * (1 - frac)
    score = np.where((total >= cfg.min_count) & (frac <= cfg.max_row_fraction), lift, 0.0)
    return _GramStats(pair_gram[gram_start], ns[pair_start][gram_start], total, best, label, score, g, owners)


def _triggers(rows: _Rows, cfg: PoisoningConfig) -> list[Trigger]:
    labelled = np.array([t is not None for t in rows.targets])
    if labelled.sum() < cfg.min_count:
        return []
    names, label_of = np.unique(np.array([str(t) for t in rows.targets]), return_inverse=True)
    base = np.bincount(label_of[labelled], minlength=len(names)) / int(labelled.sum())
    st = _gram_stats(rows, cfg, label_of, labelled, base)
    order = np.lexsort((-st.n, -st.score))  # by score, ties to the longer n-gram
    kept: list[Trigger] = []
    kept_rows: list[set[int]] = []
    for i in order[: 50 * cfg.top_k]:
        if st.score[i] <= 0 or len(kept) >= cfg.top_k:
            break
        lo, hi = np.searchsorted(st.post_gram, st.gram[i], "left"), np.searchsorted(st.post_gram, st.gram[i], "right")
        row_set = set(st.post_row[lo:hi].tolist())
        text = _gram_text(rows.inputs[min(row_set)], int(st.gram[i]), int(st.n[i]))
        # a sub-n-gram of a kept trigger over (nearly) the same rows is the same finding, shown once
        if any(text in k.ngram and len(row_set & s) >= 0.8 * len(row_set) for k, s in
               zip(kept, kept_rows, strict=True)):
            continue
        kept.append(Trigger(text, int(st.total[i]), str(names[st.label[i]]), float(st.best[i] / st.total[i]),
                            float(base[st.label[i]]), round(float(st.score[i]), 4),
                            [rows.example(r) for r in sorted(row_set)[:3]]))
        kept_rows.append(row_set)
    return kept


def scan_poisoning(paths: Sequence[PathLike], config: PoisoningConfig | None = None, *,
                   bad_bytes: BadBytes = "error") -> PoisoningReport:
    """Floods, trigger candidates and label conflicts of the rows in ``paths``."""
    cfg = config or PoisoningConfig()
    rows = _load(paths, cfg.label_field, bad_bytes)
    report = PoisoningReport(len(rows.inputs))
    if not rows.inputs:
        return report
    if len(rows.inputs) > cfg.max_rows:
        rows = _sample(rows, cfg.max_rows)
        report.sampled_rows = cfg.max_rows
    report.floods, report.conflicts = _cluster_lists(rows, _clusters(rows, cfg), cfg)
    report.triggers = _triggers(rows, cfg)
    return report


def loss_outliers(losses: Sequence[float] | np.ndarray, top_k: int = 20) -> list[tuple[int, float]]:
    """(row, robust z-score) of the rows whose loss is furthest above the median, highest first.

    The z-score uses the median and the MAD (scaled to a normal's sigma), so the outliers themselves do not
    hide by inflating the spread. Non-finite losses rank first with an infinite score.
    """
    values = np.asarray(losses, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ConfigError(f"loss_outliers: expected a non-empty 1-D sequence of losses, got shape {values.shape}")
    finite = np.isfinite(values)
    median = float(np.median(values[finite])) if finite.any() else 0.0
    mad = float(np.median(np.abs(values[finite] - median))) * 1.4826 if finite.any() else 0.0
    scale = mad if mad > 0 else (float(np.std(values[finite])) or 1.0)
    z = np.where(finite, (values - median) / scale, math.inf)
    order = np.argsort(-z, kind="stable")[:top_k]
    return [(int(i), float(z[i])) for i in order]
