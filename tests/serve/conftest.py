"""Shared serving fixtures: one registry of tiny adapters, API keys, and one authenticated server for the session."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slimtune.registry import Registry
from slimtune.serve import ApiKey, DriftThresholds, ServeConfig, hash_api_key, new_api_key, write_keys_file
from tests.serve.helpers import ServerThread, make_adapter_dir, running, tiny_tokenizer, words_prompt


@dataclass
class World:
    root: Path
    registry: Path
    folders: dict[str, Path]
    keys: dict[str, str]
    keys_file: Path
    profile_prompts: list[str]


@pytest.fixture(scope="session")
def tok() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> World:
    root = tmp_path_factory.mktemp("serve")
    rng = random.Random(7)
    profile_prompts = [words_prompt(rng, 3, 8) for _ in range(60)]
    folders = {name: make_adapter_dir(root / name, seed, 0.5, tok)
               for name, seed in [("a1", 1), ("a2", 2), ("b1", 3), ("c1", 4), ("broken", 5), ("r1", 6), ("r2", 7)]}
    folders["drift"] = make_adapter_dir(root / "drift", 8, 0.5, tok, profile_prompts)
    reg = Registry(root / "reg", actor="tests")
    for name, folder in [("alpha", "a1"), ("alpha", "a2"), ("beta", "b1"), ("gamma", "c1"), ("broken", "broken"),
                         ("roll", "r1"), ("roll", "r2"), ("drift-same", "drift"), ("drift-shift", "drift"),
                         ("admin-roll", "r1"), ("admin-roll", "r2")]:
        reg.add(folders[folder], name)
    reg.set_alias("alpha:1", "production")
    for name in ("roll", "admin-roll"):
        reg.set_alias(f"{name}:1", "production")
        reg.set_alias(f"{name}:2", "production")
    reg.close()
    keys = {"infer": new_api_key(), "admin": new_api_key(), "slow": new_api_key()}
    keys_file = root / "keys.json"
    write_keys_file(keys_file, [
        ApiKey("infer", hash_api_key(keys["infer"]), frozenset({"inference"})),
        ApiKey("admin", hash_api_key(keys["admin"], "scrypt"), frozenset({"inference", "admin"})),
        ApiKey("slow", hash_api_key(keys["slow"]), frozenset({"inference"}), rate_per_s=0.2, burst=2),
    ])
    return World(root, root / "reg", folders, keys, keys_file, profile_prompts)


def server_config(world: World, **overrides: Any) -> ServeConfig:
    settings: dict[str, Any] = dict(
        registry=world.registry, base="tiny", keys_file=world.keys_file, json_logs=False, max_batch=8,
        max_wait_ms=20, max_tokens_cap=32, default_max_tokens=8, max_prompt_tokens=64, max_body_bytes=20_000,
        rate_per_s=1000, rate_burst=1000, drift=DriftThresholds(min_samples=30), request_timeout_s=30,
    )
    settings.update(overrides)
    return ServeConfig(**settings)


@pytest.fixture(scope="session")
def server(world: World, tok: Any) -> Any:
    with running(server_config(world), tok) as srv:
        yield srv


def auth(world: World, who: str = "infer") -> dict[str, str]:
    return {"Authorization": f"Bearer {world.keys[who]}"}


__all__ = ["ServerThread", "World", "auth", "server_config"]
