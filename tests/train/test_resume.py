"""A run killed with SIGKILL at random moments (between steps, while a checkpoint is being written, after its
folder is renamed but before it is marked complete) and resumed gives bitwise the same per-step losses."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from slimtune.train import CheckpointStore, read_metrics
from tests.train.workers import RESUME_STEPS, train_run

TIMEOUT = 120.0


def _start(procs: BaseContext, run_dir: Path, pause: float = 0.0) -> Any:
    p = procs.Process(target=train_run, args=(str(run_dir), pause))  # type: ignore[attr-defined]
    p.start()
    return p


def _run_to_end(procs: BaseContext, run_dir: Path) -> dict[str, Any]:
    p = _start(procs, run_dir)
    p.join(TIMEOUT)
    assert p.exitcode == 0, f"training process failed with exit code {p.exitcode}"
    return json.loads((run_dir / "result.json").read_text())


def _kill_when(p: Any, condition: Callable[[], bool], delay: float = 0.0) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert p.is_alive(), "the training process ended before the kill point was reached"
        assert time.monotonic() < deadline, "kill point not reached in time"
        time.sleep(0.005)
    time.sleep(delay)
    p.kill()  # SIGKILL
    p.join(10)
    assert p.exitcode == -9


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(read_metrics(path)) if path.exists() else 0


def _writing(root: Path, files: int) -> bool:
    """A temporary checkpoint folder holds at least ``files`` files."""
    return root.is_dir() and any(p.name.startswith(".tmp-") and len(list(p.iterdir())) >= files
                                 for p in root.iterdir())


def _renamed_unmarked(root: Path) -> bool:
    return root.is_dir() and any(p.name.startswith("step-") and len(list(p.iterdir())) >= 7
                                 and not (p / "COMPLETE").exists() for p in root.iterdir())


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def test_sigkill_at_random_points_then_resume_gives_identical_losses(procs: BaseContext, tmp_path: Path) -> None:
    reference = _run_to_end(procs, tmp_path / "reference")
    expected = _losses(tmp_path / "reference")
    assert [s for s, _ in expected] == list(range(1, RESUME_STEPS + 1))
    assert len({loss for _, loss in expected}) == RESUME_STEPS  # the losses move: a real comparison
    assert reference["resumed_from"] is None

    resumed = 0
    for seed in range(3):
        rng = random.Random(seed)
        run_dir = tmp_path / f"killed-{seed}"
        ckpts = run_dir / "checkpoints"
        # 1: between or inside steps, at a random step and a random delay
        k = rng.randint(1, RESUME_STEPS - 4)
        p = _start(procs, run_dir)
        _kill_when(p, lambda k=k, d=run_dir: _steps_logged(d) >= k, delay=rng.uniform(0.0, 0.2))  # type: ignore[misc]
        # 2: in the middle of a checkpoint write (slowed down by the test hook), or renamed but not yet marked
        p = _start(procs, run_dir, pause=0.15)
        if seed == 1:
            _kill_when(p, lambda c=ckpts: _renamed_unmarked(c))  # type: ignore[misc]
        else:
            files = rng.randint(1, 6)
            _kill_when(p, lambda c=ckpts, f=files: _writing(c, f))  # type: ignore[misc]
        left_behind = [d for d in ckpts.iterdir() if not (d / "COMPLETE").exists()]
        assert left_behind, "the kill should have left an incomplete checkpoint folder"
        # 3: resume to the end, from the newest complete checkpoint (if the kills left one)
        newest = CheckpointStore(ckpts).latest()
        result = _run_to_end(procs, run_dir)
        assert result["resumed_from"] == (int(newest.name.split("-")[1]) if newest else None)
        resumed += newest is not None
        assert _losses(run_dir) == expected, f"seed {seed}: resumed losses differ from the uninterrupted run"
        store = CheckpointStore(ckpts, keep_last=2)
        assert all((d / "COMPLETE").exists() for d in ckpts.iterdir()), "incomplete checkpoints were not cleaned"
        assert len(store.complete()) == 2
    assert resumed >= 2, "most kill sequences should leave a checkpoint to resume from"
