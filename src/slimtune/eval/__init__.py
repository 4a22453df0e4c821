"""Evaluation: task metrics with bootstrap intervals, in-distribution / out-of-distribution / forgetting
suites, latency-memory-cost reports, the ablation runner, and HTML / Markdown / JSON reports.

    from slimtune.eval import evaluate_run, run_ablation
    report = evaluate_run("runs/x")                      # writes runs/x/eval.json, eval.md, eval.html
    result = run_ablation(recipe_dict, grid_dict, "runs/ablation", workers=2)
"""

from slimtune.eval.ablate import AblationResult, load_ablation, run_ablation
from slimtune.eval.bootstrap import Interval, PairedComparison, bootstrap_ci, paired_bootstrap, two_sample_bootstrap
from slimtune.eval.efficiency import LatencyConfig, PriceTable, benchmark_latency, flops_adapter, flops_full
from slimtune.eval.grid import Cell, expand_grid
from slimtune.eval.metrics import (
    accuracy,
    confusion_matrix,
    exact_match,
    macro_f1,
    perplexity,
    rouge_l,
    token_f1,
    token_weighted_loss,
)
from slimtune.eval.report import write_ablation_reports
from slimtune.eval.run_eval import EvalReport, evaluate_run
from slimtune.eval.suites import SuiteConfig, SuiteResult, run_suite

__all__ = [
    "AblationResult", "Cell", "EvalReport", "Interval", "LatencyConfig", "PairedComparison", "PriceTable",
    "SuiteConfig", "SuiteResult", "accuracy", "benchmark_latency", "bootstrap_ci", "confusion_matrix",
    "evaluate_run", "exact_match", "expand_grid", "flops_adapter", "flops_full", "load_ablation", "macro_f1",
    "paired_bootstrap", "perplexity", "rouge_l", "run_ablation", "run_suite", "token_f1", "token_weighted_loss",
    "two_sample_bootstrap", "write_ablation_reports",
]
