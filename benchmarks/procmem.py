"""Process-memory, thread and machine helpers shared by the CPU benchmarks (run as scripts: benchmarks/ is on
sys.path)."""

from __future__ import annotations

import os
import platform
import resource
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
