"""Recipes run end to end on the tiny local BERT classifier: the folder loads as the classifier its config.json
names, ``run_recipe`` evaluates after training when the recipe has an ``eval:`` section (RUN/eval.json, with
the trainer's own train_result.json as the training cost), and a full fine-tuning run is saved whole and
evaluated from disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from slimtune.eval.run_eval import evaluate_run
from slimtune.train.recipe import ModelSpec, folder_kind, load_model, recipe_from_dict
from slimtune.train.run import run_recipe
from slimtune.train.summary import read_summary

from .conftest import classification_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(
    model_dir: Path, data: dict[str, str], run: Path, method: dict[str, Any], lr: float = 1e-2, **eval_options: Any
) -> Any:
    base = classification_recipe(model_dir, data, steps=6)
    return recipe_from_dict(
        {
            "model": base["model"],
            "method": method,
            "train": {**base["train"], "lr": lr},
            "data": {**base["data"], "eval": {"test": base["eval"]["sets"]["test"]}},
            "eval": {**base["eval"], **eval_options},
            "output_dir": str(run),
        }
    )


def test_a_classifier_folder_loads_as_its_architecture(
    tiny_bert_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    assert folder_kind(tiny_bert_dir) == "sequence_classification" and folder_kind(tiny_llama_dir) == "causal_lm"
    model, tokenizer = load_model(ModelSpec(name=str(tiny_bert_dir)))  # no num_labels: the folder's own head
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 2
    assert tokenizer is not None
    assert type(load_model(ModelSpec(name=str(tiny_llama_dir)))[0]).__name__ == "LlamaForCausalLM"
    three, _ = load_model(ModelSpec(name=str(tiny_bert_dir)), num_labels=3)
    assert three.classifier.out_features == 3


def test_run_recipe_trains_the_classifier_and_evaluates_after_training(
    tiny_bert_dir: Path, tiny_data: dict[str, str], tmp_path: Path
) -> None:
    from slimtune.formats.safe import read_tensors

    run = tmp_path / "run"
    latency = {"batch_sizes": [1, 2], "seq_len": 8, "warmup": 0, "repeats": 2}
    recipe = _recipe(
        tiny_bert_dir,
        tiny_data,
        run,
        {"type": "lora", "r": 2, "alpha": 4, "modules_to_save": ["classifier"]},
        latency=latency,
    )
    result = run_recipe(recipe)
    # the folder's 2-label classifier trained, with its head as modules_to_save (a causal LM has no classifier)
    weights = read_tensors(run / "adapter" / "adapter_model.safetensors")
    head = [k for k in weights if k.endswith("classifier.weight")]
    assert len(head) == 1 and tuple(weights[head[0]].shape) == (2, 32)
    assert result.evaluation is not None and set(result.evaluation) == {"test", "ood"}
    report = json.loads((run / "eval.json").read_text())
    assert report["metrics"] == result.evaluation and report["plan"] == recipe.eval
    assert report["metrics"]["test"]["n"] == 48 and report["metrics"]["ood"]["n"] == 40
    assert [r["batch_size"] for r in report["latency"]["variants"]["unmerged"]] == [1.0, 2.0]
    training, summary = report["efficiency"]["training"], read_summary(run)
    assert summary is not None and training["source"] == "train_result.json"
    assert training["tokens_per_s"] == summary["tokens_per_s"] > 0
    assert training["peak_memory_bytes"] == summary["peak_memory"] > 0
    assert training["tokens"] == summary["tokens_seen"] == result.tokens_seen
    written = (run / "eval.json").read_bytes()
    again = run_recipe(recipe)  # finished: neither trains nor evaluates again
    assert again.stopped_reason == "already_complete" and again.evaluation == result.evaluation
    assert (run / "eval.json").read_bytes() == written


def test_a_label_count_that_differs_from_the_folder_reloads_the_head(
    tiny_bert_dir: Path, tiny_data: dict[str, str], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    from slimtune.formats.safe import read_tensors

    three = tmp_path / "three"
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=3, ignore_mismatched_sizes=True
    )
    model.save_pretrained(three)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert_dir / name).is_file():
            (three / name).write_bytes((tiny_bert_dir / name).read_bytes())
    recipe = _recipe(
        three, tiny_data, tmp_path / "run", {"type": "lora", "r": 2, "modules_to_save": ["classifier"]}, latency=False
    )
    run_recipe(recipe)
    weights = read_tensors(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert [tuple(v.shape) for k, v in weights.items() if k.endswith("classifier.weight")] == [(2, 32)]


def _manual_scores(model_dir: Path, rows_path: str, label_map: dict[str, int]) -> tuple[float, float]:
    """(accuracy, mean loss) of a saved classifier, one example at a time, without slimtune's eval code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in Path(rows_path).read_text().splitlines()]
    correct, losses = 0, []
    with torch.no_grad():
        for row in rows:
            logits = model(**tokenizer(row["text"], return_tensors="pt")).logits[0]
            target = label_map[row["label"]]
            correct += int(logits.argmax()) == target
            losses.append(float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([target]))))
    return correct / len(rows), sum(losses) / len(losses)


def test_a_full_fine_tuning_run_is_saved_whole_and_evaluated_from_disk(
    tiny_bert_dir: Path, tiny_data: dict[str, str], tmp_path: Path
) -> None:
    run = tmp_path / "full"
    recipe = _recipe(tiny_bert_dir, tiny_data, run, {"type": "full"}, lr=3e-3, latency=False)
    result = run_recipe(recipe)
    assert result.model_dir == run / "model" and not (run / "adapter").exists()
    assert {"config.json", "model.safetensors", "slimtune.json", "tokenizer.json"} <= {
        p.name for p in (run / "model").iterdir()
    }
    assert result.evaluation is not None and (run / "eval.json").is_file()
    report = evaluate_run(run, write=False)
    assert report.source["kind"] == "model" and report.source["model"] == str(run / "model")
    assert report.metrics == result.evaluation
    eff = report.efficiency
    assert (
        eff["trainable_parameters"] == eff["total_parameters"] and eff["flops_estimate"] == eff["flops_full_fine_tune"]
    )
    assert eff["adapter_bytes"] == sum(p.stat().st_size for p in (run / "model").rglob("*") if p.is_file())
    assert eff["training"]["source"] == "train_result.json" and eff["training"]["steps"] == 6
    label_map = json.loads((run / "model" / "slimtune.json").read_text())["label_map"]
    accuracy, loss = _manual_scores(run / "model", tiny_data["test"], label_map)
    assert report.metrics["test"]["accuracy"] == pytest.approx(accuracy)
    assert report.metrics["test"]["loss"] == pytest.approx(loss, rel=1e-4)
    _, base_loss = _manual_scores(tiny_bert_dir, tiny_data["test"], label_map)
    assert abs(report.metrics["test"]["loss"] - base_loss) > 1e-3  # the trained weights, not the base's
    direct = evaluate_run(run / "model", write=False)  # the model folder itself, its run found beside it
    assert direct.metrics == report.metrics and direct.source["run"] == str(run)
