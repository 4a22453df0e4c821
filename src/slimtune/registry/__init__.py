"""The adapter registry: immutable versions, movable aliases, gated promotion, instant rollback, integrity.

reg = Registry("reg/")
ref = reg.add("runs/x", name="chat-lora")                 # -> chat-lora:1
reg.promote(ref, to="production", policy=PromotionPolicy(tolerance_abs=0.005))
folder, manifest = resolve_uri("registry://chat-lora@production", root="reg/")
"""

from __future__ import annotations

from slimtune.registry.aliases import PromotionResult
from slimtune.registry.audit import AuditEntry
from slimtune.registry.policy import (
    DEFAULT_LOWER_IS_BETTER,
    Comparison,
    GateResult,
    PromotionPolicy,
    PromotionRefused,
    RuleFailure,
)
from slimtune.registry.records import (
    AliasMove,
    BlobProblem,
    FileEntry,
    GcReport,
    History,
    VerifyReport,
    VersionRecord,
)
from slimtune.registry.refs import RefSpec, VersionRef, is_registry_uri, parse_ref, parse_uri
from slimtune.registry.render import (
    render_diff,
    render_gate,
    render_gc,
    render_history,
    render_promotion,
    render_verify,
    render_version,
    render_versions,
)
from slimtune.registry.signing import Ed25519Key, HmacKey, ManifestKey, load_key_file
from slimtune.registry.store import Registry
from slimtune.registry.uri import ENV_KEY_FILE, ENV_ROOT, open_registry, registry_root, resolve_uri

__all__ = [
    "DEFAULT_LOWER_IS_BETTER",
    "ENV_KEY_FILE",
    "ENV_ROOT",
    "AliasMove",
    "AuditEntry",
    "BlobProblem",
    "Comparison",
    "Ed25519Key",
    "FileEntry",
    "GateResult",
    "GcReport",
    "History",
    "HmacKey",
    "ManifestKey",
    "PromotionPolicy",
    "PromotionRefused",
    "PromotionResult",
    "RefSpec",
    "Registry",
    "RuleFailure",
    "VerifyReport",
    "VersionRecord",
    "VersionRef",
    "is_registry_uri",
    "load_key_file",
    "open_registry",
    "parse_ref",
    "parse_uri",
    "registry_root",
    "render_diff",
    "render_gate",
    "render_gc",
    "render_history",
    "render_promotion",
    "render_verify",
    "render_version",
    "render_versions",
    "resolve_uri",
]
