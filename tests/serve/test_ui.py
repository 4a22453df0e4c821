"""The status page renders in headless Chromium, with content (not a blank screenshot)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimtune.serve import DriftThresholds
from tests.serve.conftest import World, server_config
from tests.serve.helpers import running

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="/usr/bin/chromium is absent: install it (apt-get install -y chromium)")
def test_status_page_renders_in_headless_chromium(world: World, tok: Any, tmp_path: Path) -> None:
    from PIL import Image

    config = server_config(world, keys_file=None, drift=DriftThresholds(min_samples=5))
    with running(config, tok) as srv:
        for i in range(8):
            body = {"model": "drift-shift", "prompt": f"w{100 + i} w150 w160 w170 w180", "max_tokens": 4}
            assert httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60).status_code == 200
        page = httpx.get(f"{srv.url}/ui").text
        assert "drift-shift:1" in page and "<svg" in page and "alpha" in page
        shot = tmp_path / "ui.png"
        assert CHROMIUM is not None
        done = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,900", f"{srv.url}/ui"],
            capture_output=True, text=True, timeout=90, check=False)
    assert shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 900)
    colors: list[tuple[int, tuple[int, int, int]]] = image.getcolors(maxcolors=1 << 20) or []  # type: ignore[assignment]
    background = max(colors)[0] / (1200 * 900)
    assert len(colors) > 20 and background < 0.97, "the screenshot is blank"
    red = sum(n for n, (r, g, b) in colors if r > 150 and g < 80 and b < 80)
    assert red > 50  # the drift bars (red where drifted) were painted
