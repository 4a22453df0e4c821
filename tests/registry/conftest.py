"""Registry test set-up: make ``slimtune`` importable from the source tree when it is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
if importlib.util.find_spec("slimtune") is None and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
