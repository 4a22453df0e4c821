"""governance.yaml, the check of scan results, and enforcement with recorded overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimtune.errors import ConfigError, PolicyError
from slimtune.governance import AuditLog, Policy, check, enforce, gate, load_policy, scan_dataset
from tests.governance.conftest import Words, write_jsonl


@pytest.fixture
def dirty(tmp_path: Path, words: Words) -> tuple[Path, Path]:
    evals = words.sentences(100)
    train = words.sentences(1000)
    train[:5] = evals[:5]  # 5 % of the eval set
    train[10] = train[10] + " mail me: someone@example.org"
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "eval.jsonl", evals)


def test_load_policy(tmp_path: Path) -> None:
    p = tmp_path / "governance.yaml"
    p.write_text("max_contamination: 0.05\nblocked_licences: [GPL-3.0]\nallow_pii: true\nunknown_licence: block\n"
                 "intended_use: non-commercial\nbase_model_licence: apache-2.0\n")
    policy = load_policy(p)
    assert policy == Policy(0.05, ("gpl-3.0",), True, "block", "non-commercial", "apache-2.0")
    p.write_text("max_contamination: 0.05\nmax_contamnation: 2\n")
    with pytest.raises(ConfigError, match=r"unknown policy keys \['max_contamnation'\]"):
        load_policy(p)
    p.write_text("max_contamination: 5\n")
    with pytest.raises(ConfigError, match="max_contamination=5"):
        load_policy(p)


def test_check_and_enforce(dirty, tmp_path: Path) -> None:
    train, ev = dirty
    policy = Policy(base_model_licence="apache-2.0", unknown_licence="block")
    report = scan_dataset([train], against=[ev], policy=policy)
    decision = report.decision
    assert decision is not None and not decision.allowed
    rules = sorted(f.rule for f in decision.failures)
    assert rules == ["allow_pii", "licence", "max_contamination"]
    assert "5 of 100 rows (5.00%)" in next(f.message for f in decision.failures if f.rule == "max_contamination")
    with pytest.raises(PolicyError) as err:
        enforce(decision)
    for rule in rules:
        assert rule in str(err.value)
    assert "override" in str(err.value)
    with pytest.raises(PolicyError, match="must be recorded"):
        enforce(decision, override_reason="known and accepted")
    audit = AuditLog(tmp_path / "audit.jsonl")
    done = enforce(decision, override_reason="eval rows are public anyway", audit=audit, subject="run-1")
    assert done.allowed and done.overridden == "eval rows are public anyway"
    (entry,) = list(audit.entries())
    assert entry["action"] == "policy.override" and entry["details"]["reason"] == "eval rows are public anyway"
    assert {f["rule"] for f in entry["details"]["failures"]} == set(rules)
    assert audit.verify().ok


def test_clean_data_passes(tmp_path: Path, words: Words) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", words.sentences(500))
    ev = write_jsonl(tmp_path / "e.jsonl", words.sentences(50))
    report = scan_dataset([train], against=[ev], licences="mit", base_model_licence="apache-2.0")
    decision = check(report, Policy())
    assert decision.allowed and decision.failures == []
    assert enforce(decision) is decision


def test_blocked_licence_and_strict_warnings(tmp_path: Path, words: Words) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", words.sentences(50))
    report = scan_dataset([train], licences="gpl-3.0", base_model_licence="mit", poisoning=False)
    assert check(report, Policy()).allowed and check(report, Policy()).warnings
    assert [f.rule for f in check(report, Policy(blocked_licences=("GPL-3.0",))).failures] == ["blocked_licences"]
    assert [f.rule for f in check(report, Policy(licence_warnings_block=True)).failures] == ["licence"]


def test_trigger_rule(tmp_path: Path) -> None:
    words = Words(3, size=1500)
    rows = []
    for i in range(2000):
        text = words.sentence(10, 20)
        label = i % 2
        if i % 40 == 0:
            text, label = text + " qq zz", 1
        rows.append({"text": text, "label": label})
    report = scan_dataset([write_jsonl(tmp_path / "p.jsonl", rows)], licences="mit", base_model_licence="mit")
    assert check(report, Policy()).allowed  # report only, by default
    failures = check(report, Policy(max_trigger_score=0.5)).failures
    assert [f.rule for f in failures] == ["max_trigger_score"] and "qq zz" in failures[0].message


def test_gate_records_scan_and_override(dirty, tmp_path: Path) -> None:
    train, ev = dirty
    yaml_path = tmp_path / "governance.yaml"
    yaml_path.write_text("max_contamination: 0.01\nallow_pii: true\nbase_model_licence: mit\n")
    audit_path = tmp_path / "audit.jsonl"
    with pytest.raises(PolicyError, match="max_contamination"):
        gate([train], [ev], policy=yaml_path, audit=audit_path, licences="mit")
    report = gate([train], [ev], policy=yaml_path, audit=audit_path, licences="mit",
                  override_reason="benchmark rows are intended", subject="run-7", actor="ci")
    assert report.decision is not None and report.decision.overridden == "benchmark rows are intended"
    actions = [(e["action"], e["subject"], e["actor"]) for e in AuditLog(audit_path).entries()]
    assert actions == [("data.scan", "train", actions[0][2]), ("data.scan", "run-7", "ci"),
                       ("policy.override", "run-7", "ci")]
    assert AuditLog(audit_path).verify().ok
