"""Process-memory, thread and machine helpers shared by the CPU benchmarks (run as scripts: benchmarks/ is on
sys.path)."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def _threads() -> int:
    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _hwm_mib() -> float | None:
    """VmHWM (peak RSS since the last reset through /proc/self/clear_refs), or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def machine() -> dict[str, Any]:
    """What the run measured on: platform, Python, CPU model, cores (all and usable), memory."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30}


def alternate(step: Callable[[str], float], sides: Sequence[str], warmup: int, steps: int) -> dict[str, Any]:
    """Both sides' training steps in this one process, one each in turn (which goes first alternates), so that a
    change in the machine's load over the run slows both alike. ``step(side)`` runs one step and returns its
    loss. Wall and process CPU times (all threads; a busy neighbour inflates it less) of the timed steps, and
    the ratio of the first side's median over the second's."""
    wall: dict[str, list[float]] = {s: [] for s in sides}
    cpu: dict[str, list[float]] = {s: [] for s in sides}
    losses: dict[str, list[float]] = {s: [] for s in sides}
    for i in range(warmup + steps):
        for side in sides if i % 2 == 0 else sides[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step(side)
            if i >= warmup:
                wall[side].append(time.perf_counter() - t0)
                cpu[side].append(time.process_time() - c0)
            losses[side].append(loss)
    med = statistics.median
    first, second = sides
    pairs = [a / b for a, b in zip(wall[first], wall[second], strict=True)]
    return {"step_s": wall, "step_cpu_s": cpu, "losses": losses,
            "step_median_s": {s: med(wall[s]) for s in sides}, "step_cpu_median_s": {s: med(cpu[s]) for s in sides},
            "ratio_of_medians": med(wall[first]) / med(wall[second]),
            "cpu_ratio_of_medians": med(cpu[first]) / med(cpu[second]),
            "per_step_pair_ratios": pairs,
            "pair_ratio_quartiles": statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3}
