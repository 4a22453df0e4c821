"""Serving: an OpenAI-compatible server for one base model and many registry adapters, with dynamic
mixed-adapter batching, API keys and limits, Prometheus metrics, drift monitoring and automatic rollback.

    from slimtune.serve import ServeConfig, serve
    serve(ServeConfig(registry=Path("reg"), base="builtin:smollm2", keys_file=Path("keys.json")))
"""

from slimtune.serve.app import create_app, serve
from slimtune.serve.auth import ApiKey, hash_api_key, load_keys_file, new_api_key, write_keys_file
from slimtune.serve.config import DriftThresholds, RollbackPolicy, ServeConfig
from slimtune.serve.drift import DriftMonitor, DriftResult, compare
from slimtune.serve.profile import PROFILE_NAME, Profile, RequestFeatures, build_profile
from slimtune.serve.report import drift_report

__all__ = [
    "PROFILE_NAME",
    "ApiKey",
    "DriftMonitor",
    "DriftResult",
    "DriftThresholds",
    "Profile",
    "RequestFeatures",
    "RollbackPolicy",
    "ServeConfig",
    "build_profile",
    "compare",
    "create_app",
    "drift_report",
    "hash_api_key",
    "load_keys_file",
    "new_api_key",
    "serve",
    "write_keys_file",
]
