"""Processes racing: 4 workers x 10 random add / promote / rollback / set-alias / delete / gc operations each.

Afterwards: version numbers are unique and dense, every alias points at a live version, each alias's moves
form one unbroken chain (every move starts where the one before it ended), blobs and audit chain verify.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import queue
import random
import time
from pathlib import Path
from typing import Any

import pytest
from registry_helpers import make_adapter

from slimtune.errors import PolicyError, RegistryError, RegistryLockedError
from slimtune.registry import PromotionRefused, Registry

WORKERS = 4
OPS = 10
POOL = 6
OPS_WEIGHTS = {"add": 4, "promote": 2, "force": 1, "rollback": 2, "stage": 1, "delete": 1, "gc": 1}
# refusals the rules call for; any other error is a bug
EXPECTED = ("is deleted", "already deleted", "no previous version", "is the target of alias")


def worker(root: str, pool: list[str], seed: int, start: Any, out: Any) -> None:
    rng = random.Random(seed)
    log: list[tuple[str, Any]] = []
    with Registry(root, actor=f"worker{seed}", lock_timeout=60) as reg:
        start.wait()  # all workers begin together, so their operations really interleave
        for _ in range(OPS):
            op = rng.choices(list(OPS_WEIGHTS), list(OPS_WEIGHTS.values()))[0]
            top = reg.show("chat").version if op != "add" else 0
            try:
                if op == "add":
                    log.append(("add", reg.add(rng.choice(pool), "chat").version))
                elif op in ("promote", "force"):
                    reason = f"race {seed}" if op == "force" else None
                    r = reg.promote(f"chat:{rng.randint(1, top)}", to="production", force_reason=reason)
                    log.append((op, (r.previous, r.ref.version)))
                elif op == "rollback":
                    r = reg.rollback("chat", "production")
                    log.append(("rollback", (r.previous, r.ref.version)))
                elif op == "stage":
                    reg.set_alias(f"chat:{rng.randint(1, top)}", "staging")
                    log.append(("stage", None))
                elif op == "gc":
                    log.append(("gc", len(reg.gc().removed)))
                else:
                    log.append(("delete", reg.delete(f"chat:{rng.randint(1, top)}").version))
            except RegistryLockedError as exc:  # must not happen with a 60 s timeout
                log.append(("UNEXPECTED", str(exc)))
            except (PolicyError, RegistryError) as exc:
                expected = op != "add" and (isinstance(exc, PromotionRefused) or any(m in str(exc) for m in EXPECTED))
                log.append((f"{op}-refused" if expected else "UNEXPECTED", str(exc)))
    out.put((seed, log))


def collect(out: Any, procs: list[Any], limit: float = 120) -> dict[int, list[tuple[str, Any]]]:
    """Every worker's log; fails fast if a worker died without reporting."""
    logs: dict[int, list[tuple[str, Any]]] = {}
    deadline = time.monotonic() + limit
    while len(logs) < len(procs):
        try:
            seed, log = out.get(timeout=0.5)
            logs[seed] = log
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"worker(s) crashed with exit codes {dead}"
            assert time.monotonic() < deadline, "workers did not finish in time"
    return logs


def check_alias_chains(reg: Registry) -> None:
    moves = reg.history("chat").alias_moves
    for alias in {m.alias for m in moves}:
        chain = [m for m in moves if m.alias == alias]
        assert chain[0].old_version is None
        for before, after in itertools.pairwise(chain):
            assert after.old_version == before.new_version, (alias, before, after)
        assert reg.aliases("chat")[alias] == chain[-1].new_version


@pytest.mark.parametrize("round_", [0, 1])
def test_processes_racing_keep_every_invariant(tmp_path: Path, round_: int) -> None:
    pool = [
        str(make_adapter(tmp_path / f"pool{i}", 100 + i, metrics={"eval": {"accuracy": 0.5 + 0.05 * i}}))
        for i in range(POOL)
    ]
    root = tmp_path / "reg"
    with Registry(root) as reg:
        reg.add(pool[0], "chat")
        reg.promote("chat:1", to="production")
    ctx = mp.get_context("fork")
    out, start = ctx.Queue(), ctx.Barrier(WORKERS)
    seeds = range(round_ * WORKERS, (round_ + 1) * WORKERS)
    procs = [ctx.Process(target=worker, args=(str(root), pool, seed, start, out)) for seed in seeds]
    for p in procs:
        p.start()
    logs = collect(out, procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    events = [e for log in logs.values() for e in log]
    assert not [e for e in events if e[0] == "UNEXPECTED"]
    added = sorted(v for op, v in events if op == "add")
    assert len(added) == len(set(added)) and added == list(range(2, 2 + len(added)))
    assert {op for op, _ in events} & {"promote", "rollback"}, "the race exercised no alias moves"
    with Registry(root) as reg:
        versions = reg.list("chat", include_deleted=True)
        assert [v.version for v in versions] == list(range(1, 2 + len(added)))
        deleted = {v.version for v in versions if v.deleted}
        assert deleted == {v for op, v in events if op == "delete"}
        assert all(target not in deleted for target in reg.aliases("chat").values())
        check_alias_chains(reg)
        report = reg.verify()
        assert report.ok, report
        assert [a.action for a in reg.audit_log()].count("add") == len(versions)
        assert list(reg.blobs.tmp_dir.iterdir()) == []
