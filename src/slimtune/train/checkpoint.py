"""Crash-safe training checkpoints: RUN/checkpoints/step-000123/ holds the trainable tensors, the AdamW state,
the schedule, every RNG state and the data position, as safetensors and JSON only (never pickle).

A checkpoint is written into a temporary folder (each file fsynced), renamed into place, and only then marked
with a ``COMPLETE`` file (fsynced); a folder without it is never resumed from and is removed at the next start.
A SIGKILL at any moment therefore leaves either the previous checkpoint or the new one, never a broken one.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimtune.errors import CheckpointError, LoadError
from slimtune.formats.safe import fsync_dir, read_json, read_tensors, write_json, write_tensors

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
PREFIX = "step-"
FORMAT_VERSION = 1
#: seconds to sleep between the files of a checkpoint, so that tests can kill a run in the middle of a write
PAUSE_ENV = "SLIMTUNE_TEST_PAUSE_IN_CHECKPOINT"
_FILES = ("trainable.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json",
          "rng.safetensors", "rng.json", "state.json")


@dataclass
class CheckpointData:
    """Everything a run needs to continue as if it had never stopped."""

    step: int
    trainable: dict[str, torch.Tensor]
    """Trainable parameters by their name in the (unwrapped) model."""
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    scheduler: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    rng_meta: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    """Data position, loss history, tokens seen, evaluation and guard counters (JSON)."""


# ----- RNG states ----------------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's python, numpy, torch CPU and CUDA generator states as tensors plus JSON."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{i}"] = state
    meta = {"python": [version, list(internal), gauss],
            "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    npm = meta["numpy"]
    keys = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((npm["kind"], keys, npm["pos"], npm["has_gauss"], npm["cached"]))
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((k for k in tensors if k.startswith("cuda/")), key=lambda k: int(k.split("/")[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            log.info("checkpoint holds %d CUDA RNG states, this machine has %d devices; CUDA RNG not restored",
                     len(states), torch.cuda.device_count())


# ----- the store -------------------------------------------------------------------------------------
class CheckpointStore:
    """The checkpoints of one run folder: save, find the newest complete one, load, prune, clean."""

    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.root / f"{PREFIX}{step:06d}"

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _step_of(p) is not None and (p / COMPLETE).is_file()]
        return sorted(found, key=lambda p: _step_of(p) or 0)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def clean_incomplete(self) -> list[Path]:
        """Remove temporary and unmarked folders left by a crash; returns what was removed."""
        if not self.root.is_dir():
            return []
        stale = [p for p in self.root.iterdir() if p.is_dir() and (
            p.name.startswith(".") or (_step_of(p) is not None and not (p / COMPLETE).is_file()))]
        for path in stale:
            log.info("removing incomplete checkpoint %s (left by an interrupted write)", path)
            shutil.rmtree(path, ignore_errors=True)
        return stale

    def save(self, data: CheckpointData) -> Path:
        """Write ``data`` crash-safely, then prune to ``keep_last``; returns the checkpoint folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path_for(data.step)
        if (final / COMPLETE).is_file():  # the same step again (training is deterministic): keep the one on disk
            log.info("checkpoint %s exists and is complete; not rewritten", final)
            return final
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
        for name, write in _writers(data):
            write(tmp / name)
            if pause:
                time.sleep(pause)
        if final.exists():
            _remove(final)
        os.rename(tmp, final)
        fsync_dir(self.root)
        if pause:
            time.sleep(pause)  # renamed but not yet marked: must still count as incomplete
        write_json(final / COMPLETE, {"format_version": FORMAT_VERSION, "step": data.step,
                                      "files": {n: (final / n).stat().st_size for n in _FILES}})
        self.prune()
        return final

    def prune(self) -> list[Path]:
        done = self.complete()
        old = done[:-self.keep_last] if len(done) > self.keep_last else []
        for path in old:
            _remove(path)
        return old

    def load(self, path: str | Path) -> CheckpointData:
        path = Path(path)
        marker = path / COMPLETE
        if not marker.is_file():
            raise CheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE} marker); it cannot be resumed")
        try:
            sizes = read_json(marker)["files"]
            for name, size in sizes.items():
                if (path / name).stat().st_size != size:
                    raise CheckpointError(f"{path / name} has {(path / name).stat().st_size} bytes, "
                                          f"the marker recorded {size}; the checkpoint was modified")
            return _read(path)
        except (LoadError, OSError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read: {exc}; delete it to resume from an older one") \
                from exc


def _writers(data: CheckpointData) -> list[tuple[str, Any]]:
    return [
        ("trainable.safetensors", lambda p: write_tensors(p, data.trainable)),
        ("optimizer.safetensors", lambda p: write_tensors(p, data.optimizer_tensors)),
        ("optimizer.json", lambda p: write_json(p, data.optimizer_meta)),
        ("scheduler.json", lambda p: write_json(p, data.scheduler)),
        ("rng.safetensors", lambda p: write_tensors(p, data.rng_tensors)),
        ("rng.json", lambda p: write_json(p, data.rng_meta)),
        ("state.json", lambda p: write_json(p, {"step": data.step, **data.state})),
    ]


def _read(path: Path) -> CheckpointData:
    state = read_json(path / "state.json")
    return CheckpointData(
        step=int(state.pop("step")),
        trainable=read_tensors(path / "trainable.safetensors"),
        optimizer_tensors=read_tensors(path / "optimizer.safetensors"),
        optimizer_meta=read_json(path / "optimizer.json"),
        scheduler=read_json(path / "scheduler.json"),
        rng_tensors=read_tensors(path / "rng.safetensors"),
        rng_meta=read_json(path / "rng.json"),
        state=state,
    )


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
        return None
    return int(name[len(PREFIX):])


def _remove(path: Path) -> None:
    """Unmark first, so that a crash half-way through deleting never leaves a 'complete' partial folder."""
    marker = path / COMPLETE
    if marker.exists():
        marker.unlink()
        fsync_dir(path)
    shutil.rmtree(path, ignore_errors=True)
