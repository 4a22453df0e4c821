"""RUN/train_result.json: what a finished ``fit`` cost (steps, tokens, loop seconds, tokens/s, peak memory,
device), written by the trainer for every run with a run folder, and read back by the evaluation report and
the ablation cells, so that no one measures it a second time.

Peak memory is the peak over this ``fit`` where the platform lets it be reset at the start (CUDA's allocator
statistics; Linux's VmHWM through /proc/self/clear_refs), else the process's peak since it started; the
file says which (``peak_memory_scope``)."""

from __future__ import annotations

import functools
import mmap
import re
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

TRAIN_RESULT_NAME = "train_result.json"
_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)
_RSS = re.compile(r"^VmRSS:\s+(\d+)\s+kB", re.MULTILINE)
_PROBE = 64 * 2**20

PeakScope = Literal["fit", "process"]


def reset_peak_memory(device: torch.device) -> PeakScope:
    """Start a new peak-memory window for ``device``; "process" when the platform cannot reset it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "fit"
    if not _hwm_reset_works():
        return "process"
    _clear_hwm()
    return "fit"


@functools.cache
def _hwm_reset_works() -> bool:
    """Whether writing 5 to /proc/self/clear_refs really brings VmHWM down to the resident set. Some kernels
    (sandboxes, some container runtimes) accept the write and leave the mark where it was, so this raises
    the mark by a touched, then unmapped, block and checks that a reset takes it away again (once per
    process)."""
    before = _kib(_RSS, _proc_status())
    if before is None or _kib(_HWM, _proc_status()) is None:
        return False
    block = mmap.mmap(-1, _PROBE)
    try:
        block.write(b"\x01" * _PROBE)  # every page touched: the high-water mark is now >= before + _PROBE
    finally:
        block.close()
    if not _clear_hwm():
        return False
    after = _kib(_HWM, _proc_status())
    return after is not None and after < before + _PROBE // 2


def _clear_hwm() -> bool:
    try:  # Linux >= 4.0: writing 5 resets the resident-set high-water mark to the current RSS
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_memory(device: torch.device) -> int:
    """Bytes: peak CUDA memory allocated on ``device``, else the peak resident set size (VmHWM, or
    ru_maxrss where /proc is missing)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _vm_hwm() -> int | None:
    return _kib(_HWM, _proc_status())


def _proc_status() -> str:
    try:
        return Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return ""


def _kib(field: re.Pattern[str], status: str) -> int | None:
    found = field.search(status)
    return int(found.group(1)) * 1024 if found else None


@dataclass(frozen=True)
class TrainSummary:
    """The content of RUN/train_result.json."""

    steps: int
    """The run's step count at the end (a resumed run counts its earlier steps too)."""
    tokens_seen: int
    """Non-padding tokens trained on over the whole run (carried across resumes)."""
    tokens_trained: int
    """Non-padding tokens trained on by this process's ``fit`` (what tokens_per_s divides)."""
    loop_seconds: float
    """Seconds this process spent in the training loop (steps, and evaluations and checkpoints due in it)."""
    tokens_per_s: float
    """tokens_trained / loop_seconds (0 when nothing was trained)."""
    wall_time: float
    """Seconds of the whole ``fit`` in this process: resume, loop, final checkpoint and save."""
    peak_memory: int
    """Bytes; see ``peak_memory_kind`` and ``peak_memory_scope``."""
    peak_memory_kind: Literal["cuda_max_allocated", "rss_peak"]
    peak_memory_scope: PeakScope
    """"fit": the peak over this fit; "process": since the process started (the platform cannot reset it)."""
    device: str
    """The device name: "cpu" or the CUDA device's name (e.g. "NVIDIA H200")."""
    world_size: int
    stopped_reason: str
    resumed_from: int | None
    final_loss: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return device.type


def write_summary(run_dir: Path, result: Any, device: torch.device, world_size: int, scope: PeakScope) -> Path:
    """RUN/train_result.json from a TrainResult; a no-op rerun of a finished run keeps the file of the run that
    trained (it has nothing new to say)."""
    from slimtune.formats.safe import write_json

    path = Path(run_dir) / TRAIN_RESULT_NAME
    if result.stopped_reason == "already_complete" and path.is_file():
        return path
    final = next((x for x in reversed(result.losses) if x is not None), None)
    summary = TrainSummary(
        steps=result.steps,
        tokens_seen=result.tokens_seen,
        tokens_trained=result.tokens_trained,
        loop_seconds=result.loop_seconds,
        tokens_per_s=result.tokens_per_s,
        wall_time=result.wall_time,
        peak_memory=result.peak_memory,
        peak_memory_kind="cuda_max_allocated" if device.type == "cuda" else "rss_peak",
        peak_memory_scope=scope,
        device=device_name(device),
        world_size=world_size,
        stopped_reason=result.stopped_reason,
        resumed_from=result.resumed_from,
        final_loss=final,
    )
    write_json(path, summary.to_dict())
    return path


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/train_result.json as a mapping, or None when the run has none (an older run, or still training)."""
    from slimtune.formats.safe import read_json

    path = Path(run_dir) / TRAIN_RESULT_NAME
    if not path.is_file():
        return None
    data: dict[str, Any] = read_json(path)
    return data
