"""The ablation's HTML report opens in headless Chromium with its figures loaded: the screenshot is not blank
and holds the saturated colours that only the embedded plots draw (tables are black, white and grey)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(page: Path, out: Path) -> np.ndarray:
    import matplotlib.image

    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={out}",
                    "--window-size=1200,2000", "--hide-scrollbars", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    image: np.ndarray = matplotlib.image.imread(out)[..., :3]  # (H, W, 3) floats in [0, 1]
    return image


def coloured_share(image: np.ndarray) -> float:
    """Share of pixels whose channels differ by > 0.25: plot lines, markers and bars, never text or borders."""
    return float(((image.max(axis=-1) - image.min(axis=-1)) > 0.25).mean())


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")
def test_html_report_renders_with_figures(ablation: dict[str, Any], tmp_path: Path) -> None:
    page = ablation["out"] / "ablation.html"
    image = screenshot(page, tmp_path / "report.png")
    assert image.shape[:2] == (2000, 1200)
    assert image.std() > 0.05, "the page rendered blank"
    with_figures = coloured_share(image)
    stripped = tmp_path / "no_figures.html"  # the same page with every image removed, as a control
    text = page.read_text(encoding="utf-8")
    stripped.write_text(text.replace("src='data:image/png;base64,", "src='data:image/png;base64,x"), "utf-8")
    without = coloured_share(screenshot(stripped, tmp_path / "control.png"))
    assert with_figures > 0.005 and with_figures > 20 * max(without, 1e-5), (with_figures, without)
