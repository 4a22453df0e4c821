"""Benchmark (issue 5): the first real ablation table. all-MiniLM-L6-v2 on Rotten Tomatoes sentiment
(builtin:rotten_tomatoes, held-out test split): LoRA r in {4, 16} on attention only vs all linear layers, DoRA,
IA3, a Pfeiffer bottleneck adapter, BitFit and full fine-tuning, 3 seeds each; the classification head (the
checkpoint's untrained pooler and the fresh classifier) trains fully in every cell. Learning rates are set per
method (the steps could be too, through a method's ``train:``), chosen on single-seed probes so that every
method learns; sized to finish on a 2-core CPU machine well under 30 minutes (2 workers x 1 thread).

Cells are kept under runs/ablation_minilm/ (resumable: run it again after a kill and only unfinished cells run;
a cell whose configuration changed runs again, its fingerprint differs); the reports go to
benchmarks/results/ablation_minilm.{json,md,html}.

    python benchmarks/ablation_minilm.py                              # the full run (27 cells)
    python benchmarks/ablation_minilm.py --quick                      # a smoke run (1 seed, 2 steps, 2 methods)
    python benchmarks/ablation_minilm.py --methods bitfit,dora --seeds 0 --out /tmp/probe   # a probe
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import slimtune
from slimtune.eval.ablate import run_ablation
from slimtune.eval.report import write_ablation_reports

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).resolve().parent.parent / "runs" / "ablation_minilm"
STEPS, BATCH, MAX_LENGTH, TRAIN_ROWS, TEST_ROWS = 80, 16, 64, 4000, 500
SEEDS = (0, 1, 2)
#: all-MiniLM-L6-v2 ships an untrained pooler (zero bias, tiny random weights): it must train with the classifier
HEAD = ["pooler", "classifier"]

#: per-method learning rates (and, where given, train: overrides), from single-seed probes at 80 steps
METHODS: dict[str, dict[str, Any]] = {
    "lora": {"type": "lora", "lr": 2e-3},  # r in RANKS x TARGETS, alpha = 2r
    "dora": {"type": "lora", "use_dora": True, "r": 8, "targets": "all", "lr": 2e-3},
    "ia3": {"type": "ia3", "lr": 1e-2},
    "bottleneck": {"type": "bottleneck", "kind": "pfeiffer", "reduction_factor": 16, "lr": 2e-3},
    "bitfit": {"type": "bitfit", "lr": 3e-3},
    "full": {"type": "full", "lr": 1e-4},
}
RANKS, TARGETS = [4, 16], ["attention", "all"]


def recipe(steps: int, eval_rows: int | None) -> dict[str, Any]:
    test = {"path": "builtin:rotten_tomatoes", "split": "test", **({"max_rows": eval_rows} if eval_rows else {})}
    return {
        "model": {"name": "builtin:minilm"},
        "data": {
            "train": {"path": "builtin:rotten_tomatoes", "split": "train", "max_rows": TRAIN_ROWS},
            "max_length": MAX_LENGTH,
        },
        "train": {"steps": steps, "batch_size": BATCH, "warmup_ratio": 0.1, "schedule": "linear", "log_every": 1000},
        "eval": {"sets": {"test": test}, "forgetting": False, "batch_size": 64, "n_resamples": 1000},
    }


def grid(quick: bool, methods: list[str] | None = None, seeds: list[int] | None = None) -> dict[str, Any]:
    chosen = methods or (["lora", "bitfit"] if quick else list(METHODS))
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; the grid's methods: {', '.join(METHODS)}")
    return {
        "methods": {k: METHODS[k] for k in chosen},
        "ranks": [4] if quick else RANKS,
        "targets": ["all"] if quick else TARGETS,
        "seeds": seeds or ([0] if quick else list(SEEDS)),
        "head": HEAD,
        "latency": {"batch_sizes": [1, 8], "seq_len": MAX_LENGTH, "warmup": 2, "repeats": 4},
    }


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 1 seed, 2 methods, 64 test rows")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default cores/workers)")
    parser.add_argument("--max-cells", type=int, default=None, help="run at most this many unfinished cells")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--out",
        default=None,
        help="cell folder (default runs/ablation_minilm); with --methods or "
        "--seeds the reports go there too, not to benchmarks/results",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    seeds = [int(s) for s in _names(args.seeds) or []] or None
    partial = args.quick or args.methods is not None or seeds is not None
    work = Path(args.out) if args.out else (WORK.with_name(WORK.name + "_quick") if args.quick else WORK)
    steps = 2 if args.quick else STEPS
    result = run_ablation(
        recipe(steps, 64 if args.quick else TEST_ROWS),
        grid(args.quick, _names(args.methods), seeds),
        work,
        workers=args.workers,
        max_cells=args.max_cells,
        write_reports=False,
        threads=args.threads,
    )
    meta = {
        "wall_time_s": time.perf_counter() - started,
        "cores": os.cpu_count(),
        "workers": args.workers,
        "threads": args.threads or max(1, (os.cpu_count() or 1) // args.workers),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "slimtune": slimtune.__version__,
        "steps": steps,
        "batch_size": BATCH,
        "max_length": MAX_LENGTH,
        "train_rows": TRAIN_ROWS,
        "test_rows": TEST_ROWS,
        "head": "+".join(HEAD),
        "ran_this_call": len(result.ran),
        "resumed": len(result.skipped),
        "failed": len(result.failed),
        "cell_cpu_time_s": sum(c.get("cell_cpu_time", 0.0) for c in result.cells),
        "load_average_at_end": os.getloadavg()[0],
        "quick": args.quick,
        "partial": partial,
    }
    stem = "ablation_minilm_quick" if args.quick else "ablation_minilm"
    out = work if partial else RESULTS
    paths = write_ablation_reports(
        result, out, stem=stem, meta=meta, title="all-MiniLM-L6-v2 on Rotten Tomatoes: PEFT method ablation"
    )
    logging.getLogger("ablation_minilm").info(
        "done in %.0f s; reports: %s", meta["wall_time_s"], ", ".join(map(str, paths.values()))
    )
    print(paths["md"].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
