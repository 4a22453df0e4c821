"""The hash-chained audit log: appends chain; edits, deletions and reordering are detected by line."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from slimtune.errors import DataError
from slimtune.governance import AuditLog
from slimtune.governance.audit import GENESIS, entry_hash


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "log.jsonl")
    for i in range(n):
        log.append("scan", f"data-{i}.jsonl", {"rows": i * 10, "note": "naïve ünïcode"}, actor="tester")
    return log


def test_chain_links_and_verifies(tmp_path: Path) -> None:
    log = _log(tmp_path)
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == list(range(5))
    assert entries[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert all(entry_hash(e) == e["hash"] for e in entries)
    result = log.verify()
    assert result.ok and result.entries == 5


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_edited_line_is_named(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["details"]["rows"] = 999  # the tamper: same shape, different content
    lines[2] = json.dumps(entry, sort_keys=True)
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and result.line == 3 and "edited" in str(result.problem)


@pytest.mark.parametrize(("mutate", "line"), [
    (lambda ls: ls[:1] + ls[2:], 2),                     # a line deleted
    (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2),      # two lines swapped
    (lambda ls: [*ls[:3], '{"seq": 3, "broken', *ls[4:]], 4),  # a line truncated
])
def test_deleted_reordered_truncated(tmp_path: Path, mutate, line: int) -> None:
    log = _log(tmp_path)
    _rewrite(log, mutate(log.path.read_text().splitlines()))
    result = log.verify()
    assert not result.ok and result.line == line


def test_rehashed_edit_still_breaks_the_next_link(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["actor"] = "mallory"
    entry["hash"] = entry_hash(entry)  # a careful forger recomputes this line's hash...
    lines[1] = json.dumps(entry)
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and result.line == 3  # ...but the next line still points at the old one


def _append_many(path: str, worker: int) -> None:
    log = AuditLog(path)
    for i in range(25):
        log.append("train", f"run-{worker}-{i}", {"worker": worker})


def test_concurrent_appends_from_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    result = AuditLog(path).verify()
    assert result.ok and result.entries == 100


def test_corrupt_last_line_refuses_append(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    with open(log.path, "ab") as fh:
        fh.write(b'{"seq": 2, "half')
    with pytest.raises(DataError, match="last line is not a JSON entry"):
        log.append("scan", "x")
