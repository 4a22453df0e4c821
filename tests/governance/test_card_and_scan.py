"""Adapter cards from lineage, and the whole data scan report (JSON and Markdown)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slimtune.errors import DataError
from slimtune.governance import build_manifest, scan_dataset, write_card
from tests.governance.conftest import Words, write_jsonl


def test_card_from_lineage(tmp_path: Path, words: Words) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", words.sentences(20))
    lineage = {
        "library_version": "0.1.0", "git_hash": "abc123def4567890", "base_model": "HuggingFaceTB/SmolLM2-135M",
        "base_fingerprint": "sha256:feed", "datasets": [build_manifest(data, licence="cc-by-4.0").to_dict()],
        "recipe": {"method": {"name": "LoRA", "r": 16}}, "seed": 7, "metrics": {"eval_loss": 1.234},
        "created": "2026-12-01T18:00:00Z", "license": "apache-2.0",
    }
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "slimtune.json").write_text(json.dumps(lineage))
    path = write_card(folder, {"accuracy": 0.91})
    text = path.read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["base_model"] == "HuggingFaceTB/SmolLM2-135M" and header["license"] == "apache-2.0"
    assert header["library_name"] == "slimtune" and {"peft", "lora"} <= set(header["tags"])
    assert header["datasets"] == [str(data.resolve())]
    metrics = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"eval_loss": 1.234, "accuracy": 0.91}
    assert "sha256:feed" in text and "train.jsonl" in text and "seed 7" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no lineage file"):
        write_card(tmp_path / "empty")


def test_scan_report_round_trip(tmp_path: Path, words: Words) -> None:
    evals = words.sentences(80)
    train = words.sentences(600)
    train[3] = evals[7]
    train[4] = "key AKIAZ7QW3ERT5YUI8OPA in a row"
    tr = write_jsonl(tmp_path / "train.jsonl", train)
    ev = write_jsonl(tmp_path / "eval.jsonl", evals)
    report = scan_dataset([tr], against={"heldout": [ev]}, licences={str(tr): "mit"}, base_model_licence="mit")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["manifests"][0]["rows"] == 600 and data["manifests"][0]["licence"] == "mit"
    assert data["licences"][0]["level"] == "ok"
    assert data["contamination"]["evals"][0]["contaminated"] == 1
    assert data["contamination"]["evals"][0]["examples"][0]["train_line"] == 4
    assert data["pii"]["counts"]["aws_access_key"] == 1
    md = report.to_markdown()
    assert "| heldout | 80 | 1 | 1.25% |" in md and "aws_access_key: 1" in md
    out = report.write_json(tmp_path / "out" / "scan.json")
    assert json.loads(out.read_text())["contamination"]["max_fraction"] == pytest.approx(1 / 80)


def test_package_licence_is_not_assumed(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    (site / "pkgdata").mkdir(parents=True)
    rows = write_jsonl(site / "pkgdata" / "reviews.jsonl", [{"text": "fine film", "label": "fresh"}])
    info = site / "pkgdata-0.1.dist-info"
    info.mkdir()
    (info / "top_level.txt").write_text("pkgdata\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pkgdata\nLicense: Apache 2.0\n")
    report = scan_dataset([rows], base_model_licence="apache-2.0", poisoning=False)
    verdict = report.licences[0]
    assert verdict.dataset_licence == "apache-2.0" and verdict.level == "warn" and "declare" in verdict.reason
