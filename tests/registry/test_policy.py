"""The promotion gate, forced promotion, rollback stack and the audit trail they leave."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_helpers import OTHER_FP, make_adapter

from slimtune.errors import ConfigError, PolicyError, RegistryError
from slimtune.registry import PromotionPolicy, PromotionRefused, Registry, render_promotion
from slimtune.registry.policy import evaluate, scan_problems


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "reg", actor="carol")
    yield registry
    registry.close()


def add(reg: Registry, tmp_path: Path, seed: int, metrics: dict | None = None, **kw: object) -> str:
    return str(reg.add(make_adapter(tmp_path / f"a{seed}", seed, metrics=metrics, **kw), "chat"))


BASE = {"eval": {"accuracy": 0.80, "loss": 1.00}, "ood": {"accuracy": 0.60}}


def test_first_promotion_passes_and_improvement_passes(reg: Registry, tmp_path: Path) -> None:
    v1 = add(reg, tmp_path, 1, BASE)
    v2 = add(reg, tmp_path, 2, {"eval": {"accuracy": 0.85, "loss": 0.90}, "ood": {"accuracy": 0.61}})
    assert reg.promote(v1, to="production").previous is None
    result = reg.promote(v2, to="production")
    assert result.previous == 1 and not result.forced and result.gate.passed
    assert len(result.gate.comparisons) == 3
    assert reg.resolve("chat@production").version == 2
    assert "1 -> 2" in render_promotion(result)


def test_regression_is_refused_listing_each_failing_rule(reg: Registry, tmp_path: Path) -> None:
    reg.promote(add(reg, tmp_path, 1, BASE), to="production")
    worse = add(reg, tmp_path, 2, {"eval": {"accuracy": 0.70, "loss": 1.20}, "ood": {"accuracy": 0.60}})
    with pytest.raises(PromotionRefused) as info:
        reg.promote(worse, to="production")
    err = info.value
    assert isinstance(err, PolicyError)
    assert sorted((f.rule, f.message.split(":")[0]) for f in err.failures) == [
        ("metrics", "eval/accuracy"),
        ("metrics", "eval/loss"),
    ]
    assert "force_reason" in str(err) and "chat:1" in str(err)
    assert reg.resolve("chat@production").version == 1  # nothing moved
    assert [a.action for a in reg.audit_log()].count("promote") == 1


def test_within_tolerance_is_allowed_absolute_and_relative(reg: Registry, tmp_path: Path) -> None:
    reg.promote(add(reg, tmp_path, 1, BASE), to="production")
    slightly = add(reg, tmp_path, 2, {"eval": {"accuracy": 0.795, "loss": 1.004}, "ood": {"accuracy": 0.60}})
    with pytest.raises(PromotionRefused):
        reg.promote(slightly, to="production")
    with pytest.raises(PromotionRefused):  # 0.004 allowed: accuracy fell 0.005
        reg.promote(slightly, to="production", policy=PromotionPolicy(tolerance_abs=0.004))
    assert reg.promote(slightly, to="production", policy=PromotionPolicy(tolerance_abs=0.006)).gate.passed
    reg.rollback("chat", "production")
    # 1 % of 0.80 = 0.008 >= 0.005 and 1 % of 1.00 = 0.01 >= 0.004
    assert reg.promote(slightly, to="production", policy=PromotionPolicy(tolerance_rel=0.01)).gate.passed


def test_metrics_compared_only_on_shared_sets(reg: Registry, tmp_path: Path) -> None:
    reg.promote(add(reg, tmp_path, 1, BASE), to="production")
    # ood missing from the candidate and a new set: only eval is compared, and it improved
    partial = add(reg, tmp_path, 2, {"eval": {"accuracy": 0.9, "loss": 0.5}, "new": {"accuracy": 0.1}})
    result = reg.promote(partial, to="production")
    assert {(c.eval_set, c.metric) for c in result.gate.comparisons} == {("eval", "accuracy"), ("eval", "loss")}
    disjoint = add(reg, tmp_path, 3, {"other": {"accuracy": 0.99}})
    with pytest.raises(PromotionRefused) as info:
        reg.promote(disjoint, to="production")
    assert [f.rule for f in info.value.failures] == ["shared-metrics"]


def test_different_base_is_refused(reg: Registry, tmp_path: Path) -> None:
    reg.promote(add(reg, tmp_path, 1, BASE), to="production")
    other_base = add(reg, tmp_path, 2, BASE, base_fingerprint=OTHER_FP)
    with pytest.raises(PromotionRefused) as info:
        reg.promote(other_base, to="production")
    assert [f.rule for f in info.value.failures] == ["base-model"]
    assert OTHER_FP in str(info.value)
    unknown_base = add(reg, tmp_path, 3, BASE, base_fingerprint=None)
    with pytest.raises(PromotionRefused, match="base-model"):
        reg.promote(unknown_base, to="production")


@pytest.mark.parametrize(
    "scans",
    [
        {"licence": "blocked"},
        {"pii": {"status": "failed"}},
        {"contamination": {"passed": False}},
        {"poisoning": {"blocked": True, "detail": "trigger phrase"}},
    ],
)
def test_blocked_or_failed_scans_are_refused(reg: Registry, tmp_path: Path, scans: dict) -> None:
    candidate = add(reg, tmp_path, 1, BASE, scans=scans)
    with pytest.raises(PromotionRefused) as info:
        reg.promote(candidate, to="production")
    assert [f.rule for f in info.value.failures] == ["governance"]


def test_passing_scans_pass() -> None:
    assert scan_problems({"licence": "passed", "pii": {"status": "ok", "passed": True, "findings": 0}}) == []


def test_force_with_reason_is_logged(reg: Registry, tmp_path: Path) -> None:
    reg.promote(add(reg, tmp_path, 1, BASE), to="production")
    worse = add(reg, tmp_path, 2, {"eval": {"accuracy": 0.5, "loss": 1.0}}, base_fingerprint=OTHER_FP)
    with pytest.raises(PolicyError, match="non-empty reason"):
        reg.promote(worse, to="production", force_reason="  ")
    result = reg.promote(worse, to="production", force_reason="hotfix for incident 42")
    assert result.forced and {f.rule for f in result.gate.failures} == {"metrics", "base-model"}
    entry = reg.audit_log("chat")[-1]
    assert (entry.action, entry.actor, entry.reason, entry.version) == (
        "force-promote",
        "carol",
        "hotfix for incident 42",
        2,
    )
    assert {f["rule"] for f in entry.details["gate"]["failures"]} == {"metrics", "base-model"}
    move = reg.history("chat").alias_moves[-1]
    assert (move.action, move.old_version, move.new_version, move.reason) == (
        "force-promote",
        1,
        2,
        "hotfix for incident 42",
    )


def test_rollback_walks_back_the_stack_and_skips_deleted(reg: Registry, tmp_path: Path) -> None:
    refs = [add(reg, tmp_path, i, BASE) for i in range(1, 5)]
    with pytest.raises(RegistryError, match="no alias"):
        reg.rollback("chat", "production")
    for ref in refs[:3]:
        reg.set_alias(ref, "production")
    reg.set_alias(refs[3], "staging")
    with pytest.raises(RegistryError, match="no previous version"):
        reg.rollback("chat", "staging")
    assert reg.rollback("chat", "production", reason="latency spike").ref.version == 2
    reg.set_alias(refs[3], "production")  # stack now: 1, 2
    reg.delete("chat:3")  # not aliased any more
    assert reg.rollback("chat", "production").ref.version == 2
    assert reg.rollback("chat", "production").ref.version == 1
    with pytest.raises(RegistryError, match="no previous version"):
        reg.rollback("chat", "production")
    assert reg.resolve("chat@production").version == 1
    actions = [m.action for m in reg.history("chat").alias_moves if m.alias == "production"]
    assert actions == ["set-alias"] * 3 + ["rollback", "set-alias", "rollback", "rollback"]


def test_rollback_skips_a_version_deleted_after_it_was_left(reg: Registry, tmp_path: Path) -> None:
    refs = [add(reg, tmp_path, i, BASE) for i in range(1, 4)]
    for ref in refs:
        reg.set_alias(ref, "production")  # stack: 1, 2
    reg.delete("chat:2")
    result = reg.rollback("chat", "production")
    assert result.ref.version == 1 and result.previous == 3
    assert reg.audit_log("chat")[-1].details["skipped"] == [2]


def test_promoting_the_current_target_changes_nothing(reg: Registry, tmp_path: Path) -> None:
    v1 = add(reg, tmp_path, 1, BASE)
    reg.promote(v1, to="production")
    n = len(reg.audit_log())
    assert reg.promote(v1, to="production").changed is False
    assert len(reg.audit_log()) == n


def test_policy_validation_and_directions() -> None:
    with pytest.raises(ConfigError, match="tolerance_abs"):
        PromotionPolicy(tolerance_abs=-1)
    with pytest.raises(ConfigError, match="tolerance_rel"):
        PromotionPolicy(tolerance_rel=float("nan"))
    policy = PromotionPolicy()
    assert all(policy.is_lower_better(m) for m in ("loss", "eval_loss", "perplexity", "ppl", "latency_p50_ms"))
    assert not any(policy.is_lower_better(m) for m in ("accuracy", "f1", "rougeL", "exact_match"))


def test_non_finite_candidate_metric_fails_the_gate() -> None:
    current = {"metrics": {"eval": {"accuracy": 0.8}}, "base_fingerprint": "x"}
    candidate = {"metrics": {"eval": {"accuracy": None}}, "base_fingerprint": "x"}
    result = evaluate(PromotionPolicy(), candidate, current, "chat:1")
    assert [f.rule for f in result.failures] == ["metrics"] and "null" in result.failures[0].message
