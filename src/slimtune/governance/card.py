"""Adapter cards: a README.md beside the adapter in the Hugging Face model-card convention (a YAML header
with base_model, license, datasets, metrics, library_name, tags), generated from the adapter's lineage
(``slimtune.json``) and optional evaluation results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from slimtune.errors import DataError
from slimtune.governance._atomic import atomic_write_text

PathLike = str | os.PathLike[str]


def _datasets(lineage: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(d) for d in lineage.get("datasets") or [] if isinstance(d, Mapping)]


def _metrics(lineage: Mapping[str, Any], evals: Mapping[str, Any] | None) -> dict[str, float]:
    merged: dict[str, Any] = dict(lineage.get("metrics") or {})
    merged.update(evals or {})
    return {k: v for k, v in merged.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _method(lineage: Mapping[str, Any]) -> str:
    recipe = lineage.get("recipe") or {}
    method = recipe.get("method") if isinstance(recipe, Mapping) else None
    if isinstance(method, Mapping):
        method = method.get("name") or method.get("type")
    return str(method or lineage.get("peft_type") or "lora").lower()


def front_matter(lineage: Mapping[str, Any], evals: Mapping[str, Any] | None = None,
                 licence: str | None = None) -> dict[str, Any]:
    """The YAML header of the card as a dict."""
    method = _method(lineage)
    datasets = _datasets(lineage)
    metrics = _metrics(lineage, evals)
    header: dict[str, Any] = {
        "base_model": lineage.get("base_model", "unknown"),
        "license": licence or lineage.get("license") or lineage.get("base_model_license") or "other",
        "library_name": "slimtune",
        "tags": sorted({"peft", method, "slimtune"}),
    }
    names = [str(d.get("name") or d.get("source") or d.get("path")) for d in datasets]
    if names:
        header["datasets"] = names
    if metrics:
        header["model-index"] = [{
            "name": str(lineage.get("name") or Path(str(lineage.get("adapter", "adapter"))).name),
            "results": [{"task": {"type": str(lineage.get("task", "text-generation"))},
                         "metrics": [{"type": k, "name": k, "value": v} for k, v in metrics.items()]}],
        }]
    return header


def _dataset_table(datasets: list[dict[str, Any]]) -> list[str]:
    if not datasets:
        return ["No dataset manifest was recorded."]
    rows = ["| file | rows | sha256 | licence | transformations |", "| --- | --- | --- | --- | --- |"]
    for d in datasets:
        steps = ", ".join(str(t.get("transform", t)) for t in d.get("transformations") or []) or "none"
        rows.append(f"| {Path(str(d.get('path', '?'))).name} | {d.get('rows', '?')} | "
                    f"`{str(d.get('sha256', '?'))[:12]}` | {d.get('licence', 'unknown')} | {steps} |")
    return rows


def render_card(lineage: Mapping[str, Any], evals: Mapping[str, Any] | None = None,
                licence: str | None = None) -> str:
    """The README.md text: YAML front matter, then a body a person reads."""
    header = front_matter(lineage, evals, licence)
    metrics = _metrics(lineage, evals)
    body = [
        f"# {header['base_model']} adapter ({_method(lineage)})", "",
        f"A {_method(lineage)} adapter for `{header['base_model']}`, trained with slimtune "
        f"{lineage.get('library_version', '?')} (git `{str(lineage.get('git_hash', '?'))[:12]}`), seed "
        f"{lineage.get('seed', '?')}, created {lineage.get('created', '?')}.", "",
        "## Base model", "", f"- id: `{header['base_model']}`",
        f"- fingerprint: `{lineage.get('base_fingerprint', 'not recorded')}`", "",
        "## Training data", "", *_dataset_table(_datasets(lineage)), "",
        "## Evaluation", "",
        *(["| metric | value |", "| --- | --- |", *(f"| {k} | {v:.4g} |" for k, v in metrics.items())]
          if metrics else ["No evaluation results were recorded."]), "",
        "## Recipe", "", "```json", json.dumps(lineage.get("recipe") or {}, indent=2, sort_keys=True, default=str),
        "```", "",
        "## Use", "",
        "Load with `slimtune.load_adapter(base, folder)`; the folder is in the Hugging Face PEFT layout, so PEFT,",
        "vLLM and LoRAX load it too. The lineage is in `slimtune.json` beside this card.", "",
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def write_card(adapter_dir: PathLike, evals: Mapping[str, Any] | None = None, *,
               lineage: Mapping[str, Any] | None = None, licence: str | None = None) -> Path:
    """Write README.md into ``adapter_dir`` from its slimtune.json (or ``lineage``), atomically."""
    folder = Path(adapter_dir)
    if lineage is None:
        source = folder / "slimtune.json"
        try:
            lineage = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{source}: no lineage file; pass lineage=... or save the adapter with slimtune") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(lineage, Mapping):
        raise DataError(f"{folder}: the lineage must be a JSON object")
    return atomic_write_text(folder / "README.md", render_card(lineage, evals, licence))
