"""Benchmark (issue 5): the first real ablation table. all-MiniLM-L6-v2 on Rotten Tomatoes sentiment
(builtin:rotten_tomatoes, held-out test split): LoRA r in {4, 16} on attention only vs all linear layers, DoRA,
IA3, a Pfeiffer bottleneck adapter, BitFit and full fine-tuning, 3 seeds each; the classification head trains
in every cell. Sized to finish on a 2-core CPU machine in under 30 minutes (2 workers x 1 thread).

Cells are kept under runs/ablation_minilm/ (resumable: run it again after a kill and only unfinished cells run);
the reports go to benchmarks/results/ablation_minilm.{json,md,html}.

    python benchmarks/ablation_minilm.py               # the full run
    python benchmarks/ablation_minilm.py --quick       # a smoke run (1 seed, 2 steps, 2 methods)
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
STEPS, BATCH, MAX_LENGTH, TRAIN_ROWS, TEST_ROWS = 40, 16, 64, 4000, 500


def recipe(steps: int, eval_rows: int | None) -> dict[str, Any]:
    test = {"path": "builtin:rotten_tomatoes", "split": "test", **({"max_rows": eval_rows} if eval_rows else {})}
    return {
        "model": {"name": "builtin:minilm"},
        "data": {"train": {"path": "builtin:rotten_tomatoes", "split": "train", "max_rows": TRAIN_ROWS},
                 "max_length": MAX_LENGTH},
        "train": {"steps": steps, "batch_size": BATCH, "warmup_ratio": 0.1, "schedule": "linear",
                  "log_every": 1000},
        "eval": {"sets": {"test": test}, "forgetting": False, "batch_size": 64, "n_resamples": 1000},
    }


def grid(quick: bool) -> dict[str, Any]:
    methods: dict[str, Any] = {
        "lora": {"type": "lora", "lr": 5e-3},
        "dora": {"type": "lora", "use_dora": True, "r": 8, "targets": "all", "lr": 5e-3},
        "ia3": {"type": "ia3", "lr": 3e-2},
        "bottleneck": {"type": "bottleneck", "kind": "pfeiffer", "reduction_factor": 16, "lr": 5e-3},
        "bitfit": {"type": "bitfit", "lr": 1e-2},
        "full": {"type": "full", "lr": 2e-4},
    }
    if quick:
        methods = {k: methods[k] for k in ("lora", "bitfit")}
    return {"methods": methods, "ranks": [4] if quick else [4, 16],
            "targets": ["all"] if quick else ["attention", "all"], "seeds": [0] if quick else [0, 1, 2],
            "head": ["classifier"],
            "latency": {"batch_sizes": [1, 8], "seq_len": MAX_LENGTH, "warmup": 2, "repeats": 4}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 1 seed, 2 methods, 64 test rows")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-cells", type=int, default=None, help="run at most this many unfinished cells")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    work = WORK.with_name(WORK.name + "_quick") if args.quick else WORK
    result = run_ablation(recipe(2 if args.quick else STEPS, 64 if args.quick else TEST_ROWS), grid(args.quick), work,
                          workers=args.workers, max_cells=args.max_cells, write_reports=False)
    meta = {"wall_time_s": time.perf_counter() - started, "cores": os.cpu_count(), "workers": args.workers,
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "transformers": transformers.__version__, "slimtune": slimtune.__version__,
            "steps": STEPS, "batch_size": BATCH, "max_length": MAX_LENGTH, "train_rows": TRAIN_ROWS,
            "test_rows": TEST_ROWS, "ran_this_call": len(result.ran), "resumed": len(result.skipped),
            "cell_cpu_time_s": sum(c.get("cell_cpu_time", 0.0) for c in result.cells),
            "load_average_at_end": os.getloadavg()[0], "quick": args.quick}
    stem = "ablation_minilm_quick" if args.quick else "ablation_minilm"
    out = work if args.quick else RESULTS
    paths = write_ablation_reports(result, out, stem=stem, meta=meta,
                                   title="all-MiniLM-L6-v2 on Rotten Tomatoes: PEFT method ablation")
    logging.getLogger("ablation_minilm").info("done in %.0f s; reports: %s", meta["wall_time_s"],
                                              ", ".join(map(str, paths.values())))
    print(paths["md"].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
