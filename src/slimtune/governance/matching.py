"""The matching engine of the contamination scan: an index of the evaluation rows (exact keys, n-gram
postings, MinHash signatures with LSH bands) and the matching of one chunk of training rows against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slimtune.errors import ConfigError
from slimtune.governance import hashing as H

KINDS = ("exact", "near_duplicate", "ngram")  # strongest first: a pair is reported under its strongest kind


@dataclass(frozen=True)
class ContaminationConfig:
    """How contamination is searched for."""

    ngram: int = 13
    """Word n-gram length of the overlap test (13 as in GPT-3)."""
    min_ngram_tokens: int = 8
    """Evaluation rows shorter than ``ngram`` but at least this long are looked for as a whole."""
    shingle: int = 5
    """Shingle length of MinHash, in tokens of ``unit``."""
    unit: H.Unit = "word"
    """Shingles of words or of characters of the normalised text."""
    num_perm: int = 128
    """MinHash permutations."""
    threshold: float = 0.7
    """Jaccard similarity at or above which two rows are near duplicates (verified on the shingle sets)."""
    bands: int | None = None
    """LSH bands; None picks them from num_perm and threshold."""
    chunk_rows: int = 20_000
    """Training rows per chunk (memory per worker grows with it)."""
    workers: int = 1
    """Worker processes for the training side; 1 runs in this process."""
    max_examples: int = 5
    """Examples kept per evaluation set."""

    def __post_init__(self) -> None:
        checks = {
            "ngram": self.ngram >= 1, "shingle": self.shingle >= 1, "num_perm": self.num_perm >= 8,
            "threshold": 0.0 < self.threshold <= 1.0, "chunk_rows": self.chunk_rows >= 1,
            "workers": self.workers >= 1, "unit": self.unit in ("word", "char"),
            "bands": self.bands is None or 1 <= self.bands <= self.num_perm,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"ContaminationConfig.{name}={getattr(self, name)!r} is out of range")

    @property
    def n_bands(self) -> int:
        return self.bands or H.lsh_bands(self.num_perm, self.threshold)


def _exact_keys(batch: H.TokenBatch, rows: np.ndarray) -> np.ndarray:
    return H.mix64(H.whole_row_hashes(batch, rows) ^ batch.lengths[rows].astype(np.uint64))


def _shingle_batch(batch: H.TokenBatch, texts: Sequence[str], cfg: ContaminationConfig) -> H.TokenBatch:
    return batch if cfg.unit == "word" else H.encode(texts, unit="char")


class EvalIndex:
    """Exact keys, n-gram hashes and MinHash signatures of the evaluation rows, searchable by chunk."""

    def __init__(self, texts: Sequence[str], cfg: ContaminationConfig) -> None:
        self.cfg = cfg
        batch = H.encode(texts)
        lengths = batch.lengths
        filled = np.flatnonzero(lengths > 0)
        self.exact = H.KeyTable(_exact_keys(batch, filled), filled)
        grams, rows = H.ngram_hashes(batch, cfg.ngram)
        short = np.flatnonzero((lengths < cfg.ngram) & (lengths >= cfg.min_ngram_tokens))
        self.short_lengths = sorted({int(n) for n in lengths[short]})
        grams = np.concatenate([grams, H.whole_row_hashes(batch, short)])
        rows = np.concatenate([rows, short])
        self.grams = H.KeyTable(*H.unique_postings(grams, rows))
        self.sig, self.shingles, self.shingle_offsets = _minhash(_shingle_batch(batch, texts, cfg), cfg)
        self.bands = H.BandIndex(H.band_keys(self.sig, cfg.n_bands))


def _minhash(batch: H.TokenBatch, cfg: ContaminationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hashes, rows = H.shingles(batch, cfg.shingle)
    sig = H.MinHasher(cfg.num_perm).signatures(hashes, rows, len(batch))
    offsets = np.searchsorted(rows, np.arange(len(batch) + 1))
    return sig, hashes, offsets


def _near_pairs(index: EvalIndex, batch: H.TokenBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sig, sh, off = _minhash(batch, index.cfg)
    q, e = index.bands.query(H.band_keys(sig, index.cfg.n_bands))
    # cheap filter on the signatures first, then the exact Jaccard of the shingle sets decides
    keep = H.estimated_jaccard(sig[q], index.sig[e]) >= index.cfg.threshold - 0.15
    q, e = q[keep], e[keep]
    io = index.shingle_offsets
    score = np.array([H.exact_jaccard(sh[off[a] : off[a + 1]], index.shingles[io[b] : io[b + 1]])
                      for a, b in zip(q, e, strict=True)], dtype=np.float64)
    keep = score >= index.cfg.threshold
    return q[keep], e[keep], score[keep]


def _key_matches(table: H.KeyTable, keys: np.ndarray, rows: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example train row, eval row) per matched key and eval row, and every train row holding a matched key.

    Work is bounded by the postings, not their product: a key in many train rows and many eval rows gives
    one example pair per eval row, not every combination.
    """
    maybe = table.candidates(keys)
    k, r = H.unique_postings(keys[maybe], rows[maybe])
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, dtype=np.int64)
    qi, ids = table.match(k[starts])
    matched = np.zeros(len(starts), dtype=bool)
    matched[qi] = True
    owner = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(k)]))
    return r[starts][qi], ids, r[matched[owner]]


def match_chunk(index: EvalIndex, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """((m, 4) float64 rows of (chunk row, eval row, kind code, score), the strongest kind per pair; and
    every chunk row flagged)."""
    batch = H.encode(texts)
    filled = np.flatnonzero(batch.lengths > 0)
    exact = _exact_keys(batch, filled)
    # identical training rows are matched once, through their first copy, and flagged together at the end
    _, first, group = np.unique(exact, return_index=True, return_inverse=True)
    reps = filled[first]
    et, ee, eflag = _key_matches(index.exact, exact, filled)
    parts = [np.column_stack([et, ee, np.zeros(len(et)), np.ones(len(et))])]
    flags = [eflag]
    sub = H.subset(batch, reps)
    near = sub if index.cfg.unit == "word" else H.encode([texts[i] for i in reps], unit="char")
    nq, ne, ns = _near_pairs(index, near)
    parts.append(np.column_stack([reps[nq], ne, np.ones(len(nq)), ns]))
    flags.append(reps[nq])
    for n in [index.cfg.ngram, *index.short_lengths]:
        grams, owner = H.ngram_hashes(sub, n)
        gt, ge, gflag = _key_matches(index.grams, grams, reps[owner])
        parts.append(np.column_stack([gt, ge, np.full(len(gt), 2.0), np.ones(len(gt))]))
        flags.append(gflag)
    group_of = np.full(len(batch), -1, dtype=np.int64)
    group_of[filled] = group
    hit_groups = np.unique(group_of[np.concatenate(flags).astype(np.int64)])
    flagged = filled[np.isin(group, hit_groups)]
    found = np.concatenate(parts)
    if len(found) == 0:
        return found.reshape(0, 4), flagged
    found = found[np.lexsort((found[:, 2], found[:, 1], found[:, 0]))]
    first_pair = np.r_[True, (found[1:, 0] != found[:-1, 0]) | (found[1:, 1] != found[:-1, 1])]
    return found[first_pair], flagged
