"""The `slimtune` command end to end on tiny models: registry life cycle, merge, ONNX export, data scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import slimtune as st
from slimtune.cli import main
from tests.conftest import model_inputs, output_of, randomize_adapters, tiny_llama


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    tiny_llama().save_pretrained(folder)
    return folder


def _adapter(base_dir: Path, out: Path, seed: int) -> Path:
    from transformers import AutoModelForCausalLM

    model = st.adapt(AutoModelForCausalLM.from_pretrained(base_dir), st.LoraConfig(r=4, targets=("q_proj", "v_proj")))
    randomize_adapters(model, seed=seed)
    model.save_adapter(out)
    return out


def test_registry_life_cycle(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    reg = str(tmp_path / "reg")
    v1, v2 = _adapter(base_dir, tmp_path / "a1", 1), _adapter(base_dir, tmp_path / "a2", 2)
    assert main(["registry", "--registry", reg, "add", str(v1), "--name", "chat"]) == 0
    assert main(["registry", "--registry", reg, "add", str(v2), "--name", "chat"]) == 0
    assert main(["registry", "--registry", reg, "promote", "chat:1", "--to", "production"]) == 0
    assert main(["registry", "--registry", reg, "promote", "chat:2", "--to", "production", "--force"]) == 2
    assert "--force needs --reason" in capsys.readouterr().out
    assert main(["registry", "--registry", reg, "promote", "chat:2", "--to", "production", "--force",
                 "--reason", "no metrics yet"]) == 0
    assert main(["registry", "--registry", reg, "rollback", "chat", "--alias", "production"]) == 0
    assert "now points at 1" in capsys.readouterr().out
    assert main(["registry", "--registry", reg, "verify"]) == 0
    assert main(["registry", "--registry", reg, "history", "chat"]) == 0
    history = capsys.readouterr().out
    assert "no metrics yet" in history
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SLIMTUNE_REGISTRY", reg)
    served = st.load_adapter(AutoModelForCausalLM.from_pretrained(base_dir), "registry://chat@production")
    direct = st.load_adapter(AutoModelForCausalLM.from_pretrained(base_dir), v1)
    inputs = model_inputs("llama")
    torch.testing.assert_close(output_of(served, inputs), output_of(direct, inputs), atol=0, rtol=0)


def test_merge_and_onnx_export_match_the_adapter(base_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    adapter = _adapter(base_dir, tmp_path / "ad", 3)
    assert main(["merge", str(adapter), "--out", str(tmp_path / "merged"), "--base", str(base_dir)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    unmerged = st.load_adapter(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    inputs = model_inputs("llama")
    torch.testing.assert_close(output_of(merged, inputs), output_of(unmerged, inputs), atol=2e-5, rtol=1e-4)
    assert main(["export", "onnx", str(adapter), "--out", str(tmp_path / "onnx"), "--base", str(base_dir),
                 "--int8"]) == 0
    report = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    assert report["max_abs_diff"] < 1e-3 and report["int8_size_bytes"] < report["size_bytes"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, output_of(unmerged, inputs).numpy(), atol=1e-4, rtol=1e-3)


def test_data_scan_flags_planted_contamination(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    evals = [" ".join(rng.choice(words, 30)) for _ in range(40)]
    train = [" ".join(rng.choice(words, 30)) for _ in range(400)] + evals[:10]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in evals))
    out = tmp_path / "scan.json"
    code = main(["data", "scan", str(tmp_path / "train.jsonl"), "--against", str(tmp_path / "eval.jsonl"),
                 "--licence", "MIT", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code in (0, 1)
    text = json.dumps(report)
    assert "eval" in text and "0.25" in text  # 10 of the 40 evaluation rows are in the training data


def test_train_refuses_contaminated_data_unless_overridden(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The governance policy stops `slimtune train` before it starts; an override is recorded with its reason."""
    import random
    import textwrap

    from tests.train.test_run import WORDS, _tokenizer

    (tmp_path / "tiny").mkdir()
    tiny_llama(seed=4).save_pretrained(tmp_path / "tiny")
    _tokenizer().save_pretrained(tmp_path / "tiny")  # type: ignore[attr-defined]
    rng = random.Random(0)
    evals = [{"prompt": " ".join(rng.choices(WORDS, k=14)), "completion": " ".join(rng.choices(WORDS, k=3))}
             for _ in range(10)]
    train = [{"prompt": " ".join(rng.choices(WORDS, k=14)), "completion": " ".join(rng.choices(WORDS, k=3))}
             for _ in range(30)] + evals[:3]  # 30 % of the evaluation set leaked into training
    for name, rows in (("train", train), ("eval", evals)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "governance.yaml").write_text("max_contamination: 0.01\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        model: {{name: "{tmp_path / 'tiny'}"}}
        method: {{type: lora, r: 2, alpha: 4}}
        data:
          train: {{path: "{tmp_path / 'train.jsonl'}", schema: prompt_completion}}
          eval: {{held: {{path: "{tmp_path / 'eval.jsonl'}", schema: prompt_completion}}}}
          max_length: 32
        train: {{steps: 1, batch_size: 2}}
        output_dir: "{tmp_path / 'run'}"
    """))
    args = ["train", str(recipe), "--policy", str(tmp_path / "governance.yaml"), "--licence", "MIT"]
    assert main(args) == 2
    assert "max_contamination" in capsys.readouterr().out
    assert not (tmp_path / "run" / "adapter").exists()
    assert main([*args, "--override-reason", "leak accepted for a smoke test"]) == 0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    audit = (tmp_path / "run" / "audit.jsonl").read_text()
    assert "leak accepted for a smoke test" in audit
