"""``diff``: two versions side by side (adapter config, lineage, recipe, metrics, scans, files) as a dict."""

from __future__ import annotations

from typing import Any

from slimtune.registry.policy import PromotionPolicy
from slimtune.registry.records import VersionRecord

LINEAGE_KEYS = ("base_model", "base_fingerprint", "library_version", "git_hash", "seed")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; lists and scalars are leaves."""
    if not isinstance(obj, dict):
        return {prefix or "value": obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def side_by_side(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """key -> {"a", "b", "changed"} over the union of keys, sorted."""
    return {k: {"a": a.get(k), "b": b.get(k), "changed": a.get(k) != b.get(k)} for k in sorted(set(a) | set(b))}


def _dataset_ids(manifest: dict[str, Any]) -> list[Any]:
    out = []
    for ds in manifest.get("datasets") or []:
        if isinstance(ds, dict):
            out.append(ds.get("name") or ds.get("id") or ds.get("sha256") or ds.get("path") or ds)
        else:
            out.append(ds)
    return out


def _metrics(a: VersionRecord, b: VersionRecord) -> dict[str, dict[str, Any]]:
    policy = PromotionPolicy()
    flat_a = {f"{s}/{m}": v for s, ms in a.metrics.items() for m, v in ms.items()}
    flat_b = {f"{s}/{m}": v for s, ms in b.metrics.items() for m, v in ms.items()}
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(flat_a) | set(flat_b)):
        va, vb = flat_a.get(key), flat_b.get(key)
        delta = vb - va if isinstance(va, float) and isinstance(vb, float) else None
        out[key] = {
            "a": va,
            "b": vb,
            "delta": delta,
            "lower_is_better": policy.is_lower_better(key.rsplit("/", 1)[-1]),
        }
    return out


def diff_records(a: VersionRecord, b: VersionRecord) -> dict[str, Any]:
    """Everything that tells two versions apart; each section maps a key to its value in a and b."""
    lineage_a = {k: a.manifest.get(k) for k in LINEAGE_KEYS} | {"datasets": _dataset_ids(a.manifest)}
    lineage_b = {k: b.manifest.get(k) for k in LINEAGE_KEYS} | {"datasets": _dataset_ids(b.manifest)}
    files_a = {f.relpath: f.sha256 for f in a.files}
    files_b = {f.relpath: f.sha256 for f in b.files}
    return {
        "a": str(a.ref),
        "b": str(b.ref),
        "config": side_by_side(
            flatten(a.manifest.get("adapter_config") or {}), flatten(b.manifest.get("adapter_config") or {})
        ),
        "lineage": side_by_side(lineage_a, lineage_b),
        "recipe": side_by_side(flatten(a.manifest.get("recipe") or {}), flatten(b.manifest.get("recipe") or {})),
        "metrics": _metrics(a, b),
        "scans": side_by_side(flatten(a.manifest.get("scans") or {}), flatten(b.manifest.get("scans") or {})),
        "files": side_by_side(files_a, files_b),
    }
