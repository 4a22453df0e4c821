"""Shared helpers of the governance tests: seeded synthetic text and small JSONL writers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest


class Words:
    """Random 'sentences' over a fixed synthetic vocabulary (reproducible per seed)."""

    def __init__(self, seed: int, size: int = 4000) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab = np.array([f"w{i}x" for i in range(size)])

    def sentence(self, low: int = 20, high: int = 40) -> str:
        return " ".join(self.rng.choice(self.vocab, int(self.rng.integers(low, high))))

    def sentences(self, n: int, low: int = 20, high: int = 40) -> list[str]:
        return [self.sentence(low, high) for _ in range(n)]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({"text": row} if isinstance(row, str) else row) + "\n")
    return path


@pytest.fixture
def words() -> Words:
    return Words(seed=1234)
