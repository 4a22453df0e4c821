"""Reading what ``registry add`` is given: a run folder (``RUN/adapter/``) or an adapter folder.

Everything is checked before a single byte is stored: pickle files are refused, the adapter config must be
a JSON object, every safetensors file must have a readable header, and metrics must be numbers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimtune.errors import CorruptFileError, RegistryError, UnsafeFormatError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
CONFIG_FILE = "adapter_config.json"
LINEAGE_FILE = "slimtune.json"
MAX_HEADER = 100 * 1024 * 1024

Metrics = dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class AdapterSource:
    """A validated adapter, ready to be stored."""

    adapter_dir: Path
    run_dir: Path | None
    files: tuple[tuple[str, Path], ...]
    """(relative posix path, absolute path) of every file, sorted."""
    adapter_config: dict[str, Any]
    lineage: dict[str, Any]
    """The content of slimtune.json ({} if the folder has none)."""
    metrics: Metrics = field(default_factory=dict)
    scans: dict[str, Any] = field(default_factory=dict)
    recipe: Any = None


def locate(source: Path) -> tuple[Path, Path | None]:
    """(adapter folder, run folder or None) for a run folder or an adapter folder."""
    source = Path(source)
    if not source.is_dir():
        raise RegistryError(f"{source} is not a folder: give a run folder or an adapter folder")
    if (source / "adapter" / CONFIG_FILE).is_file():
        return source / "adapter", source
    if (source / CONFIG_FILE).is_file():
        return source, None
    raise RegistryError(
        f"{source} is neither an adapter folder (no {CONFIG_FILE}) nor a run dir (no adapter/{CONFIG_FILE})"
    )


def collect_files(adapter_dir: Path) -> tuple[tuple[str, Path], ...]:
    """Every regular file under adapter_dir; UnsafeFormatError if any is a pickle."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(adapter_dir):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if path.is_file():
                found.append((path.relative_to(adapter_dir).as_posix(), path))
    pickles = [rel for rel, path in found if path.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise UnsafeFormatError(
            f"{adapter_dir} holds pickle-based files {pickles}; they are refused, never unpickled. Save the "
            "adapter with safetensors (model.save_adapter writes adapter_model.safetensors) and remove them"
        )
    if not any(rel.endswith(".safetensors") for rel, _ in found):
        raise RegistryError(f"{adapter_dir} has no .safetensors weights file (expected adapter_model.safetensors)")
    return tuple(sorted(found))


def check_safetensors(path: Path) -> None:
    """CorruptFileError unless the file has a well-formed safetensors header that fits the file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{path} is not a safetensors file: {size} bytes, shorter than its header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CorruptFileError(f"{path} is truncated or not safetensors: header length {n}, file {size} bytes")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"{path} has an unreadable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path} has a safetensors header that is not a JSON object")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and 8 + n + max(ends) > size:
        raise CorruptFileError(f"{path} is truncated: tensors need {8 + n + max(ends)} bytes, file has {size}")


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise RegistryError(f"{path} is missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def json_safe(obj: Any) -> Any:
    """A copy with non-finite floats replaced by None (canonical JSON refuses NaN and infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _number(value: Any) -> float | str | None:
    """A metric value as float, None for non-finite, or 'skip' for anything that is not a metric."""
    if isinstance(value, dict):
        for key in ("value", "mean"):
            if key in value:
                return _number(value[key])
        return "skip"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "skip"
    return float(value) if math.isfinite(value) else None


def normalize_metrics(obj: Any, where: str) -> Metrics:
    """``{eval_set: {metric: number}}`` from slimtune.json, eval.json or an argument."""
    if obj is None:
        return {}
    if isinstance(obj, dict) and isinstance(obj.get("metrics"), dict):
        obj = obj["metrics"]
    if not isinstance(obj, dict):
        raise RegistryError(f"metrics from {where} must be {{eval_set: {{metric: value}}}}, got {type(obj).__name__}")
    out: Metrics = {}
    for set_name, values in obj.items():
        if not isinstance(values, dict):
            continue
        kept: dict[str, float | None] = {}
        for metric, value in values.items():
            number = _number(value)
            if number == "skip":
                continue
            if number is None:
                log.warning(
                    "metric %s/%s from %s is not finite; recorded as null (fails any gate)",
                    set_name,
                    metric,
                    where,
                )
            kept[str(metric)] = number  # type: ignore[assignment]
        if kept:
            out[str(set_name)] = kept
    return out


def merge_metrics(*layers: Metrics) -> Metrics:
    """Later layers override earlier ones per (eval set, metric)."""
    out: Metrics = {}
    for layer in layers:
        for set_name, values in layer.items():
            out.setdefault(set_name, {}).update(values)
    return out


def _read_recipe(lineage: dict[str, Any], run_dir: Path | None) -> Any:
    if "recipe" in lineage:
        return lineage["recipe"]
    if run_dir is not None and (run_dir / "recipe.yaml").is_file():
        try:
            return yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise CorruptFileError(f"{run_dir / 'recipe.yaml'} is not valid YAML: {exc}") from exc
    return None


def read_source(source: Path, metrics: Metrics | None = None, scans: dict[str, Any] | None = None) -> AdapterSource:
    """Locate, validate and read an adapter; explicit metrics and scans override recorded ones."""
    adapter_dir, run_dir = locate(source)
    files = collect_files(adapter_dir)
    for rel, path in files:
        if rel.endswith(".safetensors"):
            check_safetensors(path)
    config = _read_json(adapter_dir / CONFIG_FILE, required=True)
    lineage = json_safe(_read_json(adapter_dir / LINEAGE_FILE, required=False))
    if not lineage:
        log.warning(
            "%s has no %s: base model and fingerprint unknown, promotion gates will fail",
            adapter_dir,
            LINEAGE_FILE,
        )
    layers = [normalize_metrics(lineage.get("metrics"), str(adapter_dir / LINEAGE_FILE))]
    if run_dir is not None and (run_dir / "eval.json").is_file():
        layers.append(normalize_metrics(_read_json(run_dir / "eval.json", required=True), str(run_dir / "eval.json")))
    layers.append(normalize_metrics(metrics, "the metrics argument"))
    recorded_scans = lineage.get("scans") if isinstance(lineage.get("scans"), dict) else {}
    return AdapterSource(
        adapter_dir=adapter_dir,
        run_dir=run_dir,
        files=files,
        adapter_config=json_safe(config),
        lineage=lineage,
        metrics=merge_metrics(*layers),
        scans=json_safe({**recorded_scans, **(scans or {})}),
        recipe=json_safe(_read_recipe(lineage, run_dir)),
    )
