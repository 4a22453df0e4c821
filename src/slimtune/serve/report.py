"""``drift_report``: drift per adapter version from the server's feature log, as JSON plus an HTML page with
matplotlib figures embedded as PNG data URIs (what ``slimtune monitor report`` writes)."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

from slimtune.errors import DataError, SlimtuneError
from slimtune.serve.config import DriftThresholds
from slimtune.serve.drift import DriftResult, compare
from slimtune.serve.profile import PROFILE_NAME, Profile, RequestFeatures

log = logging.getLogger(__name__)


def read_feature_log(path: Path) -> dict[str, list[RequestFeatures]]:
    """Records of ``features.jsonl`` (or a folder holding it), by adapter label; DataError names a bad line."""
    path = path / "features.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"no feature log at {path}; start the server with monitor_dir set")
    out: dict[str, list[RequestFeatures]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            out.setdefault(str(data["adapter"]), []).append(RequestFeatures.from_dict(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{number}: not a feature record ({exc})") from exc
    return out


def _registry_profiles(registry: Path | str, labels: list[str]) -> dict[str, Profile]:
    from slimtune.registry import open_registry

    found: dict[str, Profile] = {}
    with open_registry(registry) as reg:
        for label in labels:
            try:
                folder = reg.materialize(label)
            except SlimtuneError as exc:
                log.warning("no reference for %s: %s", label, exc)
                continue
            if (folder / PROFILE_NAME).is_file():
                found[label] = Profile.load(folder / PROFILE_NAME)
    return found


def _figure(reference: Profile, current: Profile) -> str:
    """A 2x3 grid of reference-vs-live distributions, as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[float], list[float]]] = [
        ("prompt length", [float(x) for x in reference.prompt_len], [float(x) for x in current.prompt_len]),
        ("output length", [float(x) for x in reference.output_len], [float(x) for x in current.output_len]),
        ("mean token log-prob", reference.mean_logprob, current.mean_logprob),
        ("hidden projection 0", [p[0] for p in reference.projections], [p[0] for p in current.projections]),
        ("hidden projection 1", [p[1] for p in reference.projections], [p[1] for p in current.projections]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (title, ref, cur) in zip(axes.flat, panels, strict=False):
        if ref and cur:
            ax.hist([ref, cur], bins=20, density=True, label=["reference", "live"], color=["#5470c6", "#ee6666"])
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax = axes.flat[5]
    total_r, total_c = sum(reference.token_hist) or 1.0, sum(current.token_hist) or 1.0
    xs = range(len(reference.token_hist))
    ax.bar(xs, [v / total_r for v in reference.token_hist], alpha=0.6, label="reference", color="#5470c6")
    ax.bar(xs, [v / total_c for v in current.token_hist], alpha=0.6, label="live", color="#ee6666")
    ax.set_title("token buckets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _section(label: str, result: DriftResult | None, image: str | None) -> str:
    if result is None:
        return f"<h2>{html.escape(label)}</h2><p>no reference profile</p>"
    rows = "".join(
        f"<tr><td>{html.escape(f.feature)}</td><td>{f.test}</td><td>{f.statistic:.4f}</td>"
        f"<td>{'' if f.p_value is None else f'{f.p_value:.4f}'}</td><td>{f.threshold}</td>"
        f"<td>{'DRIFT' if f.drifted else ('warn' if f.warning else 'ok')}</td></tr>" for f in result.features)
    verdict = "not tested (too few samples)" if not result.tested else ("DRIFT" if result.drifted else "no drift")
    img = f'<img alt="distributions of {html.escape(label)}" src="{image}">' if image else ""
    return (f"<h2>{html.escape(label)}: {verdict}</h2><p>reference {result.reference_size} requests, live "
            f"{result.current_size}</p><table border=1 cellpadding=4><tr><th>feature</th><th>test</th>"
            f"<th>statistic</th><th>p-value</th><th>threshold</th><th>verdict</th></tr>{rows}</table>{img}")


def drift_report(
    features_log: Path | str,
    out_dir: Path | str,
    registry: Path | str | None = None,
    *,
    profiles: dict[str, Profile] | None = None,
    thresholds: DriftThresholds | None = None,
    window: int | None = None,
) -> dict[str, Any]:
    """Test each adapter's last ``window`` logged requests (all: None) against its reference profile.

    References come from ``profiles`` (label -> Profile), else from ``profile.json`` of the version in
    ``registry``. Writes ``OUT/drift_report.json`` and ``OUT/drift_report.html``; returns the JSON body.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logged = read_feature_log(Path(features_log))
    refs = dict(profiles or {})
    missing = [label for label in logged if label not in refs]
    if registry is not None and missing:
        refs.update(_registry_profiles(registry, missing))
    body: dict[str, Any] = {"adapters": {}}
    sections = []
    for label, feats in sorted(logged.items()):
        current = Profile.from_features(label, feats[-window:] if window else feats)
        reference = refs.get(label)
        result = compare(reference, current, thresholds) if reference is not None else None
        body["adapters"][label] = result.to_dict() if result else None
        image = _figure(reference, current) if reference is not None and result and result.tested else None
        sections.append(_section(label, result, image))
    (out / "drift_report.json").write_text(json.dumps(body, indent=2) + "\n")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>slimtune drift report</title></head>"
            f"<body style='font-family:sans-serif'><h1>Drift report</h1>{''.join(sections)}</body></html>")
    (out / "drift_report.html").write_text(page)
    return body
