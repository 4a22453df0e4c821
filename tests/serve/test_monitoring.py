"""Monitoring: the drift statistics, drift found on a shifted stream and not on an unshifted one (over HTTP),
the drift report, metrics, and the automatic rollback when the quality proxy drops after a promotion."""

from __future__ import annotations

import base64
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from slimtune.governance.audit import AuditLog
from slimtune.registry import Registry
from slimtune.serve import Profile, RollbackPolicy, drift_report
from slimtune.serve.drift import js_distance, psi
from tests.serve.conftest import World, server_config
from tests.serve.helpers import make_adapter_dir, running, words_prompt


def test_statistics_separate_same_from_shifted_samples() -> None:
    rng = np.random.default_rng(0)
    ref, same, shifted = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000), rng.normal(0.8, 1, 2000)
    assert psi(ref, same) < 0.05 < 0.2 < psi(ref, shifted)
    assert psi(ref, ref[:0] + 5.0) > 1.0  # a far shift with empty bins stays finite thanks to the floor
    assert np.isfinite(psi([1, 1, 1], [2, 2, 2]))
    assert js_distance([5, 5, 0], [5, 5, 0]) == 0.0 and js_distance([10, 0], [0, 10]) > 0.8


def _send(url: str, model: str, prompts: list[str]) -> list[int]:
    def one(prompt: str) -> int:
        body = {"model": model, "prompt": prompt, "max_tokens": 8}
        return httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, prompts))


def test_drift_found_on_a_shifted_stream_only_and_reported(world: World, tok: Any, tmp_path: Path) -> None:
    rng = random.Random(99)  # fresh draws, not the profile's prompts
    same = [words_prompt(rng, 3, 8) for _ in range(40)]
    shifted = [words_prompt(rng, 12, 20, first=100, last=200) for _ in range(40)]
    config = server_config(world, keys_file=None, monitor_dir=tmp_path / "monitor")
    with running(config, tok) as srv:
        assert _send(srv.url, "drift-same", same) == [200] * 40
        assert _send(srv.url, "drift-shift", shifted) == [200] * 40
        drift = httpx.get(f"{srv.url}/admin/drift").json()
        page = httpx.get(f"{srv.url}/ui").text
    ok, bad = drift["drift-same:1"], drift["drift-shift:1"]
    assert ok["tested"] and bad["tested"] and ok["current_size"] == bad["current_size"] == 40
    assert not ok["drifted"] and ok["drifted_share"] < 0.5
    flagged = {f["feature"] for f in bad["features"] if f["drifted"]}
    assert bad["drifted"] and {"prompt_len", "tokens"} <= flagged
    assert "DRIFT" in page and "no drift" in page and "<svg" in page
    report = drift_report(tmp_path / "monitor", tmp_path / "report", registry=world.registry)
    assert report["adapters"]["drift-shift:1"]["drifted"] and not report["adapters"]["drift-same:1"]["drifted"]
    saved = json.loads((tmp_path / "report" / "drift_report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    html = (tmp_path / "report" / "drift_report.html").read_text()
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2 and base64.b64decode(images[0].split('"')[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_round_trips_and_matches_its_prompts(world: World) -> None:
    prof = Profile.load(world.folders["drift"])
    assert prof.size == len(world.profile_prompts) and len(prof.projections[0]) == 4
    assert prof.prompt_len == [len(p.split()) for p in world.profile_prompts]
    assert sum(prof.token_hist) == sum(prof.prompt_len)
    assert all(-20 < lp < 0 for lp in prof.mean_logprob)


def test_metrics_count_requests_tokens_batches_per_adapter(world: World, tok: Any) -> None:
    with running(server_config(world, keys_file=None), tok) as srv:
        assert _send(srv.url, "beta", ["w1 w2 w3"] * 6) == [200] * 6
        httpx.post(f"{srv.url}/v1/completions", json={"model": "nosuch", "prompt": "w1"})
        text = httpx.get(f"{srv.url}/metrics").text
    assert 'slimtune_requests_total{adapter="beta:1",route="/v1/completions",status="200"} 6.0' in text
    assert 'slimtune_errors_total{adapter="-",route="/v1/completions",status="404"} 1.0' in text
    assert 'slimtune_tokens_in_total{adapter="beta:1"} 18.0' in text
    assert 'slimtune_tokens_out_total{adapter="beta:1"} 48.0' in text
    assert 'slimtune_request_latency_seconds_count{adapter="beta:1"} 6.0' in text
    assert "slimtune_batch_size_count" in text and "slimtune_queue_time_seconds_count" in text


def test_auto_rollback_when_the_quality_proxy_drops_after_a_promotion(tok: Any, tmp_path: Path) -> None:
    good = make_adapter_dir(tmp_path / "good", 1, 1.0, tok, targets=["lm_head"])  # confident: log-prob ~ -0.1
    bad = make_adapter_dir(tmp_path / "bad", 2, 0.5, tok)  # near uniform: log-prob ~ -5
    with Registry(tmp_path / "reg", actor="tests") as reg:
        reg.add(good, "auto")
        reg.add(bad, "auto")
        reg.set_alias("auto:1", "production")
    config = server_config_for(tmp_path)
    rng = random.Random(5)
    with running(config, tok) as srv:
        assert _send(srv.url, "auto@production", [words_prompt(rng, 3, 6) for _ in range(12)]) == [200] * 12
        with Registry(tmp_path / "reg", actor="release") as reg:
            reg.set_alias("auto:2", "production", reason="release v2")
        time.sleep(0.6)
        served = []
        for _ in range(8):  # bounded: the policy decides after 8 requests of the new version
            replies = [httpx.post(f"{srv.url}/v1/completions", timeout=60, json={
                "model": "auto@production", "prompt": words_prompt(rng, 3, 6), "max_tokens": 8}) for _ in range(4)]
            served += [r.json()["model"] for r in replies]
            if served[-1] == "auto:1":
                break
        metrics = httpx.get(f"{srv.url}/metrics").text
    assert "auto:2" in served and served[-1] == "auto:1"
    with Registry(tmp_path / "reg") as reg:
        assert reg.aliases("auto")["production"] == 1
        last = reg.audit_log("auto")[-1]
        assert last.action == "rollback" and last.reason is not None and last.reason.startswith("auto-rollback")
    entries = list(AuditLog(tmp_path / "audit.jsonl").entries())
    assert [e["action"] for e in entries] == ["serve.auto_rollback"] and entries[0]["details"]["to"] == 1
    assert 'slimtune_auto_rollbacks_total{alias="production",name="auto"} 1.0' in metrics


def server_config_for(tmp_path: Path) -> Any:
    from slimtune.serve import ServeConfig

    return ServeConfig(registry=tmp_path / "reg", base="tiny", json_logs=False, max_wait_ms=5,
                       audit_log=tmp_path / "audit.jsonl",
                       rollback=RollbackPolicy(enabled=True, max_drop=0.5, window=8))
