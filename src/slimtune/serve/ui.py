"""``/ui``: a server-rendered status page with no external assets (inline CSS and SVG only)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from slimtune.serve.drift import DriftResult

if TYPE_CHECKING:
    from slimtune.serve.state import ServerState

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;background:#f7f7f9;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ccd;padding:4px 10px;text-align:left;font-size:14px}th{background:#e8eaf2}
.ok{color:#17713a}.bad{color:#b3261e;font-weight:bold}.warn{color:#a25c00}.card{display:inline-block;
vertical-align:top;margin:0 18px 18px 0;padding:10px;background:#fff;border:1px solid #ccd}"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body or '<tr><td colspan=9>none</td></tr>'}</table>"


def drift_svg(result: DriftResult, width: int = 360) -> str:
    """Bars of each feature's statistic scaled by its threshold (1.0 = the threshold; red beyond)."""
    rows = list(result.features)
    bar_h, pad, label_w = 16, 4, 120
    height = max(1, len(rows)) * (bar_h + pad) + 20
    scale = (width - label_w - 40) / 2.0  # two thresholds wide
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, f in enumerate(rows):
        ratio = (f.threshold / max(f.p_value, 1e-12)) if f.test == "ks" and f.p_value is not None else (
            f.statistic / f.threshold if f.threshold else 0.0)
        w = min(2.0, ratio) * scale
        y = i * (bar_h + pad)
        color = "#b3261e" if f.drifted else ("#d08a00" if f.warning else "#2e7d32")
        parts.append(f'<text x="0" y="{y + 12}" font-size="11">{_e(f.feature)} ({f.test})</text>'
                     f'<rect x="{label_w}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}" fill="{color}"/>'
                     f'<text x="{label_w + max(w, 1) + 4:.1f}" y="{y + 12}" font-size="10">{f.statistic:.3f}</text>')
    x = label_w + scale
    parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 16}" stroke="#555" stroke-dasharray="3,3"/>'
                 f'<text x="{x - 30}" y="{height - 4}" font-size="10">threshold</text></svg>')
    return "".join(parts)


def _models_rows(overview: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, info in overview["models"].items():
        aliases = ", ".join(f"{_e(a)} &rarr; {v}" for a, v in sorted(info["aliases"].items()))
        rows.append([_e(name), _e(", ".join(str(v) for v in info["versions"])), aliases or "-"])
    return rows


def _drift_cards(st: ServerState) -> str:
    cards = []
    for adapter, result in st.monitor.results().items():
        if result is None:
            body = "<p>no reference profile (add profile.json to the adapter folder before registry add)</p>"
        elif not result.tested:
            body = f"<p>window {result.current_size} / reference {result.reference_size}: too few samples yet</p>"
        else:
            verdict = '<span class="bad">DRIFT</span>' if result.drifted else '<span class="ok">no drift</span>'
            share = f"{sum(f.drifted for f in result.features)}/{len(result.features)} features drifted"
            body = (f"<p>{verdict} (window {result.current_size}; {share}; alarm at "
                    f"{result.drift_share:.0%})</p>{drift_svg(result)}")
        cards.append(f'<div class="card"><b>{_e(adapter)}</b>{body}</div>')
    return "".join(cards) or "<p>no traffic yet</p>"


def render_status(st: ServerState) -> str:
    """The whole page."""
    from slimtune.serve.app import adapter_overview

    overview = adapter_overview(st)
    live = [[_e(a), str(int(v["requests"])), str(int(v["errors"])), f"{v['p50'] * 1000:.1f}", f"{v['p95'] * 1000:.1f}"]
            for a, v in overview["live"].items()]
    rollbacks = [[_e(e["name"]), _e(e["alias"]), str(e["from_version"]), str(e["to_version"]), _e(e["reason"])]
                 for e in overview["rollbacks"]]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='5'>"
        f"<title>slimtune serve</title><style>{_CSS}</style></head><body>"
        f"<h1>slimtune serve &middot; base {_e(overview['base'])}</h1>"
        f"<p>queued requests: {st.batcher.queue.qsize()} &middot; loaded adapters: "
        f"{_e(', '.join(overview['loaded']) or 'none')}</p>"
        f"<h2>Registry models</h2>{_table(['model', 'versions', 'aliases'], _models_rows(overview))}"
        f"<h2>Live requests</h2>{_table(['adapter', 'requests', 'errors', 'p50 ms', 'p95 ms'], live)}"
        f"<h2>Drift</h2>{_drift_cards(st)}"
        f"<h2>Automatic rollbacks</h2>{_table(['model', 'alias', 'from', 'to', 'reason'], rollbacks)}"
        "</body></html>"
    )
