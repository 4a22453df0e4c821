"""A stateful property test: random add / promote / set-alias / rollback / delete / gc sequences against a model.

After every step: version numbers are dense per name, deleted flags and aliases match the model, every alias
points at a live version, rollback returned the version the model predicts, and every blob verifies.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from registry_helpers import make_adapter

from slimtune.errors import RegistryError
from slimtune.registry import PromotionRefused, Registry

# tmpfs where there is one: the machine runs ~1,000 steps, and fsync on a real disk would dominate
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
ACCURACY = (0.5, 0.6, 0.7, 0.8)
BLOCKED = 3  # pool item whose governance scan says blocked
NAMES = st.sampled_from(["alpha", "alpha", "alpha", "beta"])  # most steps on one name: longer histories
ALIASES = st.sampled_from(["staging", "production"])


@pytest.fixture(scope="module", autouse=True)
def pool(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("pool")
    RegistryMachine.pool = [
        make_adapter(
            base / f"item{i}",
            200 + i,
            metrics={"eval": {"accuracy": acc}},
            scans={"licence": "blocked" if i == BLOCKED else "passed"},
        )
        for i, acc in enumerate(ACCURACY)
    ]


class RegistryMachine(RuleBasedStateMachine):
    pool: ClassVar[list[Path]] = []

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="registry-sm-", dir=FAST_TMP))
        self.reg = Registry(self.tmp / "reg", actor="hypothesis")
        self.items: dict[str, list[int]] = {}  # name -> pool item of each version
        self.deleted: dict[str, set[int]] = {}
        self.alias: dict[tuple[str, str], int] = {}
        self.stack: dict[tuple[str, str], list[int]] = {}

    def teardown(self) -> None:
        self.reg.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _pick(self, name: str, pick: int) -> int | None:
        n = len(self.items.get(name, []))
        return None if n == 0 else (pick - 1) % n + 1

    def _move(self, key: tuple[str, str], version: int) -> None:
        if key in self.alias:
            self.stack.setdefault(key, []).append(self.alias[key])
        self.alias[key] = version

    @initialize(items=st.lists(st.integers(0, len(ACCURACY) - 1), min_size=2, max_size=3))
    def start_with_versions(self, items: list[int]) -> None:
        for item in items:  # so that alias moves and rollbacks happen from the first steps on
            self.add("alpha", item)

    @rule(name=NAMES, item=st.integers(0, len(ACCURACY) - 1))
    def add(self, name: str, item: int) -> None:
        ref = self.reg.add(self.pool[item], name)
        self.items.setdefault(name, []).append(item)
        assert ref.version == len(self.items[name])

    @rule(name=NAMES, pick=st.integers(1, 8), alias=ALIASES, force=st.booleans())
    def promote(self, name: str, pick: int, alias: str, force: bool) -> None:
        version = self._pick(name, pick)
        if version is None:
            with pytest.raises(RegistryError, match="no model"):
                self.reg.promote(f"{name}:1", to=alias)
            return
        key, item = (name, alias), self.items[name][version - 1]
        current = self.alias.get(key)
        refused = item == BLOCKED or (
            current is not None and current != version and ACCURACY[item] < ACCURACY[self.items[name][current - 1]]
        )
        reason = "hypothesis says so" if force else None
        if version in self.deleted.get(name, set()):
            with pytest.raises(RegistryError, match="deleted"):
                self.reg.promote(f"{name}:{version}", to=alias, force_reason=reason)
        elif current == version:
            assert not self.reg.promote(f"{name}:{version}", to=alias, force_reason=reason).changed
        elif refused and not force:
            with pytest.raises(PromotionRefused):
                self.reg.promote(f"{name}:{version}", to=alias)
        else:
            result = self.reg.promote(f"{name}:{version}", to=alias, force_reason=reason)
            assert result.forced == refused and result.previous == current
            self._move(key, version)

    @rule(name=NAMES, pick=st.integers(1, 8), alias=ALIASES)
    def set_alias(self, name: str, pick: int, alias: str) -> None:
        version = self._pick(name, pick)
        if version is None or version in self.deleted.get(name, set()):
            with pytest.raises(RegistryError):
                self.reg.set_alias(f"{name}:{version or 1}", alias)
            return
        result = self.reg.set_alias(f"{name}:{version}", alias)
        if self.alias.get((name, alias)) != version:
            assert result.changed
            self._move((name, alias), version)

    @rule(name=NAMES, alias=ALIASES)
    def rollback(self, name: str, alias: str) -> None:
        key = (name, alias)
        stack = list(self.stack.get(key, []))
        expected = None
        while stack and expected is None:
            candidate = stack.pop()
            if candidate != self.alias.get(key) and candidate not in self.deleted.get(name, set()):
                expected = candidate
        if key not in self.alias or expected is None:
            with pytest.raises(RegistryError):
                self.reg.rollback(name, alias)
            return  # refused: the registry's stack is unchanged, and so is the model's
        result = self.reg.rollback(name, alias)
        assert result.ref.version == expected and result.previous == self.alias[key]
        self.stack[key] = stack
        self.alias[key] = expected

    @rule(name=NAMES, pick=st.integers(1, 8))
    def delete(self, name: str, pick: int) -> None:
        version = self._pick(name, pick)
        if version is None:
            return
        aliased = any(k[0] == name and v == version for k, v in self.alias.items())
        if aliased or version in self.deleted.get(name, set()):
            with pytest.raises(RegistryError):
                self.reg.delete(f"{name}:{version}")
            return
        self.reg.delete(f"{name}:{version}")
        self.deleted.setdefault(name, set()).add(version)

    @rule()
    def gc(self) -> None:
        self.reg.gc()

    @invariant()
    def matches_the_model(self) -> None:
        for name, items in self.items.items():
            records = self.reg.list(name, include_deleted=True)
            assert [r.version for r in records] == list(range(1, len(items) + 1))
            assert {r.version for r in records if r.deleted} == self.deleted.get(name, set())
            assert self.reg.aliases(name) == {a: v for (n, a), v in self.alias.items() if n == name}
            for rec in records:
                assert not (rec.deleted and rec.aliases), f"{rec.ref} is deleted but aliased"

    @invariant()
    def blobs_verify(self) -> None:
        report = self.reg.verify()
        assert report.ok, report


RegistryMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_registry_state_machine = RegistryMachine.TestCase
