"""Benchmark: contamination scan of 1,000,000 synthetic training rows against 10,000 evaluation rows.

Rows are random word sequences (20-60 words) from a Zipf-weighted vocabulary; some evaluation rows are planted
into the training data as copies (case and punctuation changed), small edits (a few words replaced) and
spans embedded in other text. Prints the scan time and the recall of the planted rows, and writes JSON to
benchmarks/results/governance_contamination.json.

    python benchmarks/governance_contamination.py                      # the full size, 2 workers
    python benchmarks/governance_contamination.py --train-rows 100000  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from slimtune.governance.contamination import ContaminationConfig, scan_contamination

RESULTS = Path(__file__).parent / "results" / "governance_contamination.json"


def _vocabulary(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = {"".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(size * 2)}
    vocab = np.array(sorted(words)[:size])
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.9  # Zipf-like, as word frequencies are
    return vocab, weights / weights.sum()


def _rows(rng: np.random.Generator, vocab: np.ndarray, p: np.ndarray, n: int) -> list[str]:
    lengths = rng.integers(20, 61, n)
    words = rng.choice(vocab, lengths.sum(), p=p)
    cuts = np.cumsum(lengths)[:-1]
    return [" ".join(chunk) for chunk in np.split(words, cuts)]


def _plant(rng: np.random.Generator, evals: list[str], train: list[str], count: int) -> np.ndarray:
    """Put ``count`` evaluation rows into the training rows; a third each copied, edited, embedded."""
    chosen = rng.choice(len(evals), count, replace=False)
    slots = rng.choice(len(train), count, replace=False)
    for k, (e, t) in enumerate(zip(chosen, slots, strict=True)):
        words = evals[e].split()
        if k % 3 == 0:
            train[t] = evals[e].capitalize() + "."
        elif k % 3 == 1:
            for pos in rng.choice(len(words), 2, replace=False):  # two words replaced
                words[pos] = "edited"
            train[t] = " ".join(words)
        else:
            span = " ".join(words[:15])
            train[t] = train[t] + " " + span + " " + train[(t + 1) % len(train)]
    return chosen


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the scan's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _write(path: Path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=1_000_000)
    parser.add_argument("--eval-rows", type=int, default=10_000)
    parser.add_argument("--planted", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not write the results JSON")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vocab, p = _vocabulary(rng, 50_000)
    t0 = time.perf_counter()
    train, evals = _rows(rng, vocab, p, args.train_rows), _rows(rng, vocab, p, args.eval_rows)
    chosen = _plant(rng, evals, train, args.planted)
    planted = set(chosen.tolist())
    with tempfile.TemporaryDirectory() as tmp:
        train_path, eval_path = Path(tmp) / "train.jsonl", Path(tmp) / "eval.jsonl"
        _write(train_path, train)
        _write(eval_path, evals)
        del train
        generate_s = time.perf_counter() - t0
        cfg = ContaminationConfig(workers=args.workers)
        load_before = os.getloadavg()[0]
        cpu0 = _cpu_seconds()
        t1 = time.perf_counter()
        report = scan_contamination([train_path], {"eval": [eval_path]}, cfg)
        scan_s = time.perf_counter() - t1
        cpu_s = _cpu_seconds() - cpu0
        train_mb = train_path.stat().st_size / 1e6
    # the eval file has one row per line, so line - 1 is the row planted
    flagged_eval = {line - 1 for lines in report.evals[0].lines.values() for line in lines}
    recall = len(planted & flagged_eval) / len(planted)
    recall_by_plant = {
        name: round(float(np.mean([int(e) in flagged_eval for e in chosen[k::3]])), 4)
        for k, name in enumerate(("copied", "two_words_replaced", "15_word_span_embedded"))
    }
    false_pos = len(flagged_eval - planted)
    result = {
        "benchmark": "governance_contamination", "train_rows": args.train_rows, "eval_rows": args.eval_rows,
        "train_mb": round(train_mb, 1), "planted": len(planted), "workers": args.workers,
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "generate_s": round(generate_s, 1), "scan_s": round(scan_s, 1), "scan_cpu_s": round(cpu_s, 1),
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
        "rows_per_s": round(args.train_rows / scan_s), "planted_recall": round(recall, 4),
        "planted_recall_by_kind": recall_by_plant,
        "false_positive_eval_rows": false_pos, "by_kind": report.evals[0].by_kind,
        "flagged_train_rows": report.flagged_rows,
    }
    print(f"scan of {args.train_rows:,} training rows ({train_mb:.0f} MB) against {args.eval_rows:,} eval rows "
          f"on {args.workers} workers: {scan_s:.1f} s wall, {cpu_s:.1f} s CPU ({result['rows_per_s']:,} rows/s; "
          f"load average {load_before:.1f} before)")
    print(f"planted recall {recall:.4f} ({len(planted & flagged_eval)}/{len(planted)}), "
          f"unplanted eval rows flagged: {false_pos}, by kind: {report.evals[0].by_kind}")
    print(f"recall by planted kind: {recall_by_plant}")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
