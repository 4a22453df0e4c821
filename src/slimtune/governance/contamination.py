"""Contamination and leakage between training data and evaluation sets: exact matches after normalisation,
13-gram overlap (as in the GPT-3 decontamination), and near duplicates by MinHash with LSH banding.

The evaluation sets are indexed in memory; the training data streams past them in chunks, optionally in
several worker processes, so a million training rows need neither a million-row index nor much memory.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from slimtune.governance.matching import KINDS, ContaminationConfig, EvalIndex, match_chunk
from slimtune.governance.reader import (
    BadBytes,
    Format,
    detect_format,
    iter_lines,
    iter_rows,
    iter_texts,
    parse_lines,
    row_text,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass
class Example:
    """One contaminated evaluation row and the training row that matched it."""

    eval_path: str
    eval_line: int
    eval_text: str
    train_path: str
    train_line: int
    train_text: str
    kind: str
    score: float


@dataclass
class EvalContamination:
    """How much of one evaluation set appears in the training data."""

    name: str
    paths: list[str]
    rows: int
    contaminated: int
    by_kind: dict[str, int]
    examples: list[Example] = field(default_factory=list)
    lines: dict[str, list[int]] = field(default_factory=dict)
    """The contaminated lines of each evaluation file."""

    @property
    def fraction(self) -> float:
        return self.contaminated / self.rows if self.rows else 0.0

    def to_dict(self, max_lines: int = 50) -> dict[str, Any]:
        out = asdict(self)
        out["fraction"] = self.fraction
        out["lines"] = {p: v[:max_lines] for p, v in self.lines.items()}
        return out


@dataclass
class ContaminationReport:
    """The result of a scan: per evaluation set, and the training rows that matched (for decontamination)."""

    train_paths: list[str]
    train_rows: int
    evals: list[EvalContamination]
    flagged: dict[str, list[int]]
    seconds: float
    config: ContaminationConfig

    @property
    def flagged_rows(self) -> int:
        return sum(len(v) for v in self.flagged.values())

    @property
    def max_fraction(self) -> float:
        return max((e.fraction for e in self.evals), default=0.0)

    def to_dict(self, max_lines: int = 50) -> dict[str, Any]:
        return {
            "train_paths": self.train_paths, "train_rows": self.train_rows,
            "flagged_train_rows": self.flagged_rows,
            "flagged_lines": {p: v[:max_lines] for p, v in self.flagged.items()},
            "evals": [e.to_dict() for e in self.evals], "max_fraction": self.max_fraction,
            "seconds": round(self.seconds, 3), "config": asdict(self.config),
        }


@dataclass
class _EvalRows:
    name: str
    paths: list[str]
    path_of: list[int]
    lines: list[int]
    texts: list[str]


_WORKER_INDEX: EvalIndex | None = None


def _worker_init(index: EvalIndex) -> None:
    global _WORKER_INDEX
    _WORKER_INDEX = index


def _snippet(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _load_eval(name: str, paths: Sequence[PathLike], bad_bytes: BadBytes) -> _EvalRows:
    rows = _EvalRows(name, [str(p) for p in paths], [], [], [])
    for path_no, line, text in iter_texts(paths, bad_bytes=bad_bytes):
        rows.path_of.append(path_no)
        rows.lines.append(line)
        rows.texts.append(text)
    return rows


@dataclass
class _Chunk:
    """Training rows of one file: raw lines (parsed by the worker, which is where the time goes) or texts."""

    path_no: int
    path: str
    fmt: Format
    raw: list[tuple[int, str]] | None = None
    lines: list[int] | None = None
    texts: list[str] | None = None


@dataclass
class _Result:
    path_no: int
    lines: np.ndarray
    found: np.ndarray
    flagged: np.ndarray
    snippets: dict[int, str]


def _process(index: EvalIndex, chunk: _Chunk) -> _Result:
    if chunk.raw is not None:
        rows = list(parse_lines(chunk.path, chunk.fmt, chunk.raw))
        lines, texts = [r.line for r in rows], [row_text(r.fields) for r in rows]
    else:
        lines, texts = chunk.lines or [], chunk.texts or []
    found, flagged = match_chunk(index, texts)
    snippets = {int(t): _snippet(texts[int(t)]) for t in np.unique(found[:, 0])}
    return _Result(chunk.path_no, np.array(lines, dtype=np.int64), found, flagged, snippets)


def _worker_process(chunk: _Chunk) -> _Result:
    if _WORKER_INDEX is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker started without an index")
    return _process(_WORKER_INDEX, chunk)


def _chunks(paths: Sequence[PathLike], size: int, bad_bytes: BadBytes) -> Iterator[_Chunk]:
    for path_no, path in enumerate(paths):
        fmt = detect_format(path)
        if fmt in ("csv", "tsv"):
            rows = iter_rows(path, bad_bytes=bad_bytes)
            while batch := list(itertools.islice(rows, size)):
                yield _Chunk(path_no, str(path), fmt, lines=[r.line for r in batch],
                             texts=[row_text(r.fields) for r in batch])
        else:
            lines = iter_lines(path, bad_bytes=bad_bytes)
            while raw := list(itertools.islice(lines, size)):
                yield _Chunk(path_no, str(path), fmt, raw=raw)


class _Tally:
    """Per evaluation row: the strongest match seen so far and one example; the training rows flagged."""

    def __init__(self, n_eval: int) -> None:
        self.best = np.full(n_eval, len(KINDS), dtype=np.int64)
        self.examples: dict[int, tuple[int, int, str, float]] = {}
        self.flagged: list[np.ndarray] = []
        self.rows = 0

    def add(self, res: _Result) -> None:
        self.rows += len(res.lines)
        if len(res.flagged):
            self.flagged.append(np.column_stack([np.full(len(res.flagged), res.path_no), res.lines[res.flagged]]))
        if len(res.found) == 0:
            return
        found = res.found
        train, ev, kind = found[:, 0].astype(np.int64), found[:, 1].astype(np.int64), found[:, 2].astype(np.int64)
        order = np.lexsort((kind, ev))
        first = order[np.r_[True, ev[order][1:] != ev[order][:-1]]]  # strongest match per eval row
        better = first[kind[first] < self.best[ev[first]]]
        self.best[ev[better]] = kind[better]
        for i in better:
            t = int(train[i])
            self.examples[int(ev[i])] = (res.path_no, int(res.lines[t]), res.snippets[t], float(found[i, 3]))


def _run_chunks(index: EvalIndex, chunks: Iterator[_Chunk], tally: _Tally, workers: int) -> None:
    if workers == 1:
        for chunk in chunks:
            tally.add(_process(index, chunk))
        return
    import multiprocessing as mp

    # fork shares the index with the workers for free; spawn (other platforms) pickles it once per worker
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pending: collections.deque[Future[_Result]] = collections.deque()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_worker_init,
                             initargs=(index,)) as pool:
        for chunk in chunks:
            pending.append(pool.submit(_worker_process, chunk))
            while len(pending) > 2 * workers:  # bounded: chunks in flight hold their lines in memory
                tally.add(pending.popleft().result())
        while pending:
            tally.add(pending.popleft().result())


def _eval_report(rows: _EvalRows, offset: int, tally: _Tally, train_paths: list[str],
                 cfg: ContaminationConfig) -> EvalContamination:
    best = tally.best[offset : offset + len(rows.texts)]
    by_kind = {k: int((best == i).sum()) for i, k in enumerate(KINDS)}
    hit = np.flatnonzero(best < len(KINDS))
    report = EvalContamination(rows.name, rows.paths, len(rows.texts), len(hit), by_kind)
    report.lines = {p: [] for p in rows.paths}
    for local in hit:
        report.lines[rows.paths[rows.path_of[local]]].append(rows.lines[local])
    for local in hit[: cfg.max_examples]:
        path_no, line, text, score = tally.examples[offset + int(local)]
        report.examples.append(Example(
            rows.paths[rows.path_of[local]], rows.lines[local], _snippet(rows.texts[local]),
            train_paths[path_no], line, text, KINDS[int(best[local])], round(score, 4)))
    return report


def scan_contamination(
    train: Sequence[PathLike],
    evals: Mapping[str, Sequence[PathLike]],
    config: ContaminationConfig | None = None,
    *,
    bad_bytes: BadBytes = "error",
) -> ContaminationReport:
    """Find every evaluation row of each named set that appears in the training files, by any of the kinds."""
    cfg = config or ContaminationConfig()
    start = time.perf_counter()
    sets = [_load_eval(name, paths, bad_bytes) for name, paths in evals.items()]
    all_texts = [t for s in sets for t in s.texts]
    index = EvalIndex(all_texts, cfg)
    log.info("indexed %d evaluation rows in %.1fs", len(all_texts), time.perf_counter() - start)
    tally = _Tally(len(all_texts))
    _run_chunks(index, _chunks(train, cfg.chunk_rows, bad_bytes), tally, cfg.workers)
    train_paths = [str(p) for p in train]
    reports, offset = [], 0
    for rows in sets:
        reports.append(_eval_report(rows, offset, tally, train_paths, cfg))
        offset += len(rows.texts)
    flagged: dict[str, list[int]] = {p: [] for p in train_paths}
    if tally.flagged:
        pairs = np.unique(np.concatenate(tally.flagged), axis=0)
        for path_no, line in pairs:
            flagged[train_paths[int(path_no)]].append(int(line))
    return ContaminationReport(train_paths, tally.rows, reports, flagged, time.perf_counter() - start, cfg)


def split_overlap(
    splits: Mapping[str, Sequence[PathLike]],
    config: ContaminationConfig | None = None,
    *,
    bad_bytes: BadBytes = "error",
) -> list[EvalContamination]:
    """Leakage inside one dataset: each later split (e.g. test) checked against each earlier one (train)."""
    names = list(splits)
    out = []
    for i, earlier in enumerate(names):
        for later in names[i + 1 :]:
            report = scan_contamination(splits[earlier], {f"{later} in {earlier}": splits[later]}, config,
                                        bad_bytes=bad_bytes)
            out.extend(report.evals)
    return out


__all__ = ["KINDS", "ContaminationConfig", "ContaminationReport", "EvalContamination", "EvalIndex", "Example",
           "match_chunk", "scan_contamination", "split_overlap"]
