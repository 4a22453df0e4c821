"""Vectorised text hashing for the scans: normalisation, token hashes, n-gram hashes, MinHash and LSH banding.

Words are hashed to uint64 once each (a per-process cache), rows become one flat array of token hashes with
row offsets, and every n-gram, shingle, signature and band key is then computed by whole-array numpy
arithmetic, which is what makes a million rows a matter of seconds rather than an hour.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Unit = Literal["word", "char"]
U64 = np.uint64
_WORD = re.compile(r"\w+")
_BASE = np.uint64(0x100000001B3)  # odd multiplier of the polynomial rolling hash (FNV prime)
_EMPTY = np.uint32(0xFFFFFFFF)


def normalize(text: str) -> str:
    """Casefold, NFKC, drop punctuation and control characters, collapse whitespace: the text compared."""
    return " ".join(tokenize(text))


def tokenize(text: str) -> list[str]:
    """Normalised word tokens: NFKC (only when needed), casefolded, runs of letters/digits/underscore."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return _WORD.findall(text.casefold())


class _HashCache(dict[str, int]):
    """Word -> 64-bit hash, deterministic across processes (keyed BLAKE2b, not Python's salted hash())."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._key = seed.to_bytes(8, "little")

    def __missing__(self, word: str) -> int:
        value = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8,
                                               key=self._key).digest(), "little")
        if len(self) < 5_000_000:  # bounded: a pathological vocabulary must not eat the memory
            self[word] = value
        return value


_CACHES: dict[int, _HashCache] = {}


@dataclass(frozen=True)
class TokenBatch:
    """Rows as one flat array of token hashes; row i is ``hashes[offsets[i]:offsets[i + 1]]``."""

    hashes: np.ndarray  # (total_tokens,) uint64
    offsets: np.ndarray  # (rows + 1,) int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def encode(texts: Iterable[str], unit: Unit = "word", seed: int = 0) -> TokenBatch:
    """Tokenise and hash every text (word tokens, or characters of the normalised text)."""
    cache = _CACHES.setdefault(seed, _HashCache(seed))
    get = cache.__getitem__
    flat: list[int] = []
    lengths: list[int] = []
    for text in texts:
        tokens: Sequence[str] = tokenize(text) if unit == "word" else normalize(text)
        lengths.append(len(tokens))
        flat.extend(map(get, tokens))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenBatch(np.array(flat, dtype=U64), offsets)


def subset(batch: TokenBatch, rows: np.ndarray) -> TokenBatch:
    """The given rows of a batch as a batch of their own."""
    lengths = batch.lengths[rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(batch.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
    return TokenBatch(batch.hashes[index], offsets)


def unique_postings(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (key, row) posting per distinct pair, sorted by key then row (a row repeating an n-gram, or a
    text repeated in many rows, must not multiply the pairs a lookup produces)."""
    order = np.lexsort((rows, keys))
    k, r = keys[order], rows[order]
    keep = np.r_[True, (k[1:] != k[:-1]) | (r[1:] != r[:-1])] if len(k) else np.zeros(0, dtype=bool)
    return k[keep], r[keep]


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: spreads every input bit over all output bits (polynomial hashes need it)."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


def ngram_hashes(batch: TokenBatch, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every n-gram that lies inside one row, and the row of each: ((m,) uint64, (m,) int64).

    The hash of a token sequence is the same wherever it occurs and whatever n was asked for, so an n-gram
    of one batch can be looked up among the n-grams of another.
    """
    flat, total = batch.hashes, len(batch.hashes)
    if total < n or n < 1:
        return np.zeros(0, dtype=U64), np.zeros(0, dtype=np.int64)
    width = total - n + 1
    acc = flat[:width].copy()
    for j in range(1, n):
        acc *= _BASE
        acc += flat[j : j + width]
    rows = np.repeat(np.arange(len(batch), dtype=np.int64), batch.lengths)[:width]
    valid = np.arange(width, dtype=np.int64) + n <= batch.offsets[rows + 1]
    return mix64(acc[valid]), rows[valid]


def whole_row_hashes(batch: TokenBatch, rows: np.ndarray) -> np.ndarray:
    """The n-gram hash (n = the row's length) of each given non-empty row, equal to ngram_hashes' value."""
    lengths = batch.lengths
    if len(rows) == 0 or len(batch.hashes) == 0:
        return mix64(np.zeros(len(rows), dtype=U64))
    # sum_i h_i * B^(end - 1 - i): the closed form of the rolling hash, one pass however long a row is
    powers = np.full(int(lengths.max()), _BASE, dtype=U64)
    powers[0] = 1
    powers = np.cumprod(powers, dtype=U64)
    row_of = np.repeat(np.arange(len(batch), dtype=np.int64), lengths)
    exponent = batch.offsets[row_of + 1] - 1 - np.arange(len(batch.hashes))
    filled = np.flatnonzero(lengths > 0)  # reduceat over non-empty rows only: their segments tile the array
    totals = np.zeros(len(batch), dtype=U64)
    totals[filled] = np.add.reduceat(batch.hashes * powers[exponent], batch.offsets[filled])
    return mix64(totals[rows])


def shingles(batch: TokenBatch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-token shingles per row, rows shorter than k contributing one shingle of all their tokens."""
    hashes, rows = ngram_hashes(batch, k)
    short = np.flatnonzero((batch.lengths < k) & (batch.lengths > 0))
    if len(short):
        hashes = np.concatenate([hashes, whole_row_hashes(batch, short)])
        rows = np.concatenate([rows, short])
        order = np.argsort(rows, kind="stable")
        hashes, rows = hashes[order], rows[order]
    return hashes, rows


@dataclass(frozen=True)
class MinHasher:
    """MinHash with ``num_perm`` multiply-shift hash functions, 32-bit values."""

    num_perm: int = 128
    seed: int = 1

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        a = rng.integers(1, 2**63, self.num_perm, dtype=np.uint64) | U64(1)
        b = rng.integers(0, 2**63, self.num_perm, dtype=np.uint64)
        return a, b

    def signatures(self, hashes: np.ndarray, rows: np.ndarray, n_rows: int, chunk: int = 1024) -> np.ndarray:
        """(n_rows, num_perm) uint32 signatures; ``rows`` must be sorted; rows without shingles are all-max."""
        a, b = self._params()
        out = np.full((n_rows, self.num_perm), _EMPTY, dtype=np.uint32)
        # fixed-size chunks keep the (chunk, num_perm) temporaries in cache, however long one row is
        for lo in range(0, len(hashes), chunk):
            hi = min(lo + chunk, len(hashes))
            r = rows[lo:hi]
            vals = ((hashes[lo:hi, None] * a[None, :] + b[None, :]) >> U64(32)).astype(np.uint32)  # (c, P)
            starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
            seg_rows = r[starts]
            # a row cut by a chunk edge is merged with what earlier chunks found for it
            out[seg_rows] = np.minimum(out[seg_rows], np.minimum.reduceat(vals, starts, axis=0))
        return out


def band_keys(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(n_rows, bands) uint64 LSH keys: each band's rows of the signature hashed together."""
    n, p = signatures.shape
    r = p // bands
    sig = signatures[:, : bands * r].astype(U64).reshape(n, bands, r)  # (n, bands, r)
    acc = np.zeros((n, bands), dtype=U64)
    for j in range(r):
        acc = mix64(acc * _BASE + sig[:, :, j])
    return acc


def lsh_bands(num_perm: int, threshold: float) -> int:
    """Bands for a signature of ``num_perm``: the band count whose S-curve has most recall at ``threshold``
    while its 50 % point stays above ``threshold - 0.25`` (candidates are verified, so recall comes first).
    """
    best = 1
    for bands in range(1, num_perm + 1):
        r = num_perm // bands
        if r < 1:
            break
        midpoint = (1 / bands) ** (1 / r)
        if midpoint >= threshold - 0.25:
            best = bands
    return best


def match_sorted(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (query position, position in ``keys``) with equal values; ``keys`` sorted, duplicates allowed."""
    lo = np.searchsorted(keys, query, side="left")
    count = np.searchsorted(keys, query, side="right") - lo
    hit = np.flatnonzero(count)
    reps = count[hit]
    # positions lo .. hi-1 of every hit, without a Python loop
    step = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    return np.repeat(hit, reps), np.repeat(lo[hit], reps) + step


class KeyTable:
    """Sorted uint64 keys with a row id each, and a bitmap of their top bits that rejects most misses with
    one gather instead of a binary search (most queried hashes are not in an evaluation set)."""

    def __init__(self, keys: np.ndarray, ids: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys, self.ids = keys[order], ids[order]
        self._shift = U64(64 - int(np.clip(np.ceil(np.log2(max(len(keys), 1) * 16)), 10, 26)))
        self._seen = np.zeros(1 << (64 - int(self._shift)), dtype=bool)
        self._seen[(self.keys >> self._shift).astype(np.int64)] = True

    def __len__(self) -> int:
        return len(self.keys)

    def candidates(self, query: np.ndarray) -> np.ndarray:
        """Positions of the queries that may be present (no false negatives)."""
        return np.flatnonzero(self._seen[(query >> self._shift).astype(np.int64)])

    def match(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (query position, id) pair with equal keys."""
        maybe = self.candidates(query)
        q, pos = match_sorted(self.keys, query[maybe])
        return maybe[q], self.ids[pos]


class BandIndex:
    """The LSH band keys of an indexed set, one lookup table per band."""

    def __init__(self, keys: np.ndarray) -> None:
        self.size = len(keys)
        rows = np.arange(len(keys), dtype=np.int64)
        self.tables = [KeyTable(keys[:, band], rows) for band in range(keys.shape[1])]

    def query(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique (query row, index row) pairs that share at least one band key."""
        q_all, i_all = [], []
        for band, table in enumerate(self.tables):
            q, ids = table.match(query[:, band])
            q_all.append(q)
            i_all.append(ids)
        if not q_all:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        n = max(self.size, 1)
        pair = np.unique(np.concatenate(q_all).astype(np.int64) * n + np.concatenate(i_all))
        return pair // n, pair % n


def self_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges linking rows that share a band key: neighbours in each band's sorted order (a chain per bucket,
    enough for connected components, and linear in the bucket size even for a flood of copies)."""
    a_all, b_all = [], []
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        same = np.flatnonzero(keys[order[1:], band] == keys[order[:-1], band])
        a_all.append(order[same])
        b_all.append(order[same + 1])
    if not a_all:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    a, b = np.concatenate(a_all), np.concatenate(b_all)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair = np.unique(lo * max(len(keys), 1) + hi)
    n = max(len(keys), 1)
    return pair // n, pair % n


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal MinHash values per row pair (rows all-max, i.e. empty, score 0)."""
    if len(sig_a) == 0:
        return np.zeros(0)
    equal = (sig_a == sig_b).mean(axis=1)
    empty = (sig_a == _EMPTY).all(axis=1) | (sig_b == _EMPTY).all(axis=1)
    return np.where(empty, 0.0, equal)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two shingle-hash arrays taken as sets."""
    ua, ub = np.unique(a), np.unique(b)
    if len(ua) == 0 and len(ub) == 0:
        return 0.0
    inter = len(np.intersect1d(ua, ub, assume_unique=True))
    return inter / (len(ua) + len(ub) - inter)
