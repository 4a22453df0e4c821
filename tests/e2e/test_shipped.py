"""Every shipped recipe runs (shortened), the demo runs in its quick mode, and the real SmolLM2 adapter merges
and exports to ONNX with outputs equal to the unmerged adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import slimtune as st
from slimtune.cli import main

pytestmark = pytest.mark.slow

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


def _short(recipe: Path) -> list[str]:
    raw = yaml.safe_load(recipe.read_text())
    overrides = ["train.steps=2", "train.batch_size=2", "train.checkpoint_every=1", "train.eval_every=null",
                 "data.train.max_rows=16"]
    evals = raw.get("data", {}).get("eval", {})
    overrides += [f"data.eval.{name}.max_rows=4" for name in evals]
    return overrides


def test_recipes_exist() -> None:
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_shipped_recipe_runs(recipe: Path, tmp_path: Path) -> None:
    assert main(["train", str(recipe), *_short(recipe), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "recipe.yaml").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [x["step"] for x in lines if "loss" in x][-1] == 2
    lineage = json.loads((run / "adapter" / "slimtune.json").read_text())
    assert lineage["base_fingerprint"] and lineage["base_model"]
    if recipe.stem.startswith("minilm"):  # `slimtune eval` on a real run: metrics per evaluation set
        assert main(["eval", str(run), "--no-latency"]) == 0
        metrics = json.loads((run / "eval.json").read_text())["metrics"]
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert set(summary["before"]) == {"held_out", "ood_topics"}
    assert summary["losses"] and all(x is None or x > 0 for x in summary["losses"])
    assert (tmp_path / "demo" / "adapter" / "adapter_model.safetensors").is_file()
    assert "PEFT layout" in capsys.readouterr().out
    assert summary["registry"]["production"] == summary["registry"]["version"] == 1
    assert (tmp_path / "demo" / "adapter" / "README.md").is_file()  # the adapter card
    scan = json.loads((tmp_path / "demo" / "data_scan.json").read_text())
    assert {e["name"] for e in scan["contamination"]["evals"]} == {"held_out", "ood_topics"}


def test_smollm2_merge_and_onnx(smollm2, tmp_path: Path) -> None:
    import copy

    import numpy as np
    import onnxruntime as ort

    from slimtune.formats.export import export_onnx, save_merged

    base, tokenizer = smollm2
    model = st.adapt(copy.deepcopy(base), st.LoraConfig(r=8, targets=("q_proj", "v_proj", "down_proj")))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    ids = torch.randint(0, 49152, (2, 24), generator=g)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    report = save_merged(model, tokenizer, tmp_path / "merged", ids)
    assert report.max_abs_diff < 1e-3
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    text = tokenizer(["Water boils at one hundred degrees Celsius at sea level, and it freezes at zero degrees."],
                     return_tensors="pt")["input_ids"]
    onnx = export_onnx(merged, tmp_path / "onnx", 49152, quantize=True, sample_ids=text)
    assert onnx.int8_size_bytes is not None and onnx.int8_size_bytes < onnx.size_bytes / 3
    # dynamic int8 keeps about half of SmolLM2-135M's next-token choices on real text (measured 0.44-0.50):
    # reported, not hidden; the float ONNX graph is the one checked for equality below
    assert onnx.int8_top1_agreement is not None and 0.0 <= onnx.int8_top1_agreement <= 1.0
    session = ort.InferenceSession(onnx.path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())})[0]
    scale = float(expected.abs().max())
    assert float(np.abs(got - expected.numpy()).max()) < 1e-4 * scale * 10
