"""Process-memory and thread helpers shared by the CPU benchmarks (run as scripts: benchmarks/ is on sys.path)."""

from __future__ import annotations

import os
import resource

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
