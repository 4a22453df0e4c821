"""Suites on tiny random models: LM loss and the forgetting check against an independent computation with
transformers' own loss, generation metrics from the generated text, and the generalisation gap."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import slimtune as st
from slimtune.errors import ConfigError
from slimtune.eval import metrics as mt
from slimtune.eval.suites import SuiteConfig, run_suite

from .conftest import WORDS, classification_recipe, write_jsonl


def _adapted_llama(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    adapted = st.adapt(model, st.LoraConfig(r=4, alpha=8, targets="all-linear"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapted.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return adapted, AutoTokenizer.from_pretrained(folder)


def _reference_loss(model: Any, tokenizer: Any, path: str) -> float:
    """Token-weighted loss from transformers' own mean loss, one example at a time."""
    total, count = 0.0, 0
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
            batch = torch.tensor([ids])
            n = len(ids) - 1
            total += float(model(input_ids=batch, labels=batch).loss) * n
            count += n
    return total / count


def test_lm_suite_and_forgetting_match_transformers_loss(tiny_llama_dir: Path, tiny_data: dict[str, str]) -> None:
    model, tokenizer = _adapted_llama(tiny_llama_dir)
    spec = {"path": tiny_data["text"], "schema": "text"}
    config = SuiteConfig.from_dict({"sets": {"general": spec}, "forgetting": spec, "n_resamples": 200})
    result = run_suite(config, model, tokenizer)
    model.eval()
    adapted_loss = _reference_loss(model, tokenizer, tiny_data["text"])
    with model.disabled():
        base_loss = _reference_loss(model, tokenizer, tiny_data["text"])
    general = result.metrics()["general"]
    assert general["loss"] == pytest.approx(adapted_loss, rel=1e-5)
    assert general["perplexity"] == pytest.approx(np.exp(adapted_loss), rel=1e-5)
    forgetting = result.metrics()["forgetting/" + tiny_data["text"]]
    assert forgetting["loss_base"] == pytest.approx(base_loss, rel=1e-5)
    assert forgetting["loss"] == pytest.approx(adapted_loss, rel=1e-5)
    assert abs(forgetting["loss_delta"]) > 1e-3  # the random adapter changed the model
    ci = result.forgetting["loss_delta_interval"]  # type: ignore[index]
    assert ci["low"] <= forgetting["loss_delta"] <= ci["high"]
    interval = result.as_dict()["intervals"]["general"]["loss"]
    assert interval["low"] < general["loss"] < interval["high"]


def test_generation_suite_scores_the_generated_text(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = _adapted_llama(tiny_llama_dir)
    rng = random.Random(2)
    rows = [{"prompt": " ".join(rng.choice(WORDS[5:]) for _ in range(4)),
             "completion": " ".join(rng.choice(WORDS[5:]) for _ in range(3))} for _ in range(10)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    config = SuiteConfig.from_dict({"sets": {"qa": {"path": path, "schema": "prompt_completion"}},
                                    "forgetting": False, "max_new_tokens": 4, "n_resamples": 100, "batch_size": 4})
    result = run_suite(config, model, tokenizer)
    assert result.task == "generation"
    scored = result.sets["qa"]
    samples = scored.extra["samples"]
    assert [s["reference"] for s in samples] == [r["completion"] for r in rows[:5]]
    recomputed = [mt.token_f1(s["prediction"], s["reference"]) for s in samples]
    assert list(scored.per_example["token_f1"][:5]) == pytest.approx(recomputed)
    assert 0 <= scored.metrics["rouge_l"] <= 1 and np.isfinite(scored.metrics["perplexity"])
    again = run_suite(config, model, tokenizer)  # greedy decoding: deterministic
    assert again.sets["qa"].extra["samples"] == samples


def test_generalisation_gap_is_id_minus_ood(tiny_bert_dir: Path, tiny_data: dict[str, str]) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    raw = classification_recipe(tiny_bert_dir, tiny_data)["eval"]
    result = run_suite(SuiteConfig.from_dict(raw, max_length=16), model, tokenizer,
                       label_map={"neg": 0, "pos": 1})
    metrics = result.metrics()
    gap = result.gaps["test-ood"]
    assert gap["estimate"] == pytest.approx(metrics["test"]["accuracy"] - metrics["ood"]["accuracy"])
    assert gap["low"] <= gap["estimate"] <= gap["high"]
    assert result.forgetting is None


def test_suite_config_errors_name_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="nsets"):
        SuiteConfig.from_dict({"nsets": {}})
    with pytest.raises(ConfigError, match="kind"):
        SuiteConfig.from_dict({"sets": {"a": {"path": "x.jsonl", "kind": "weird"}}})
    with pytest.raises(ConfigError, match="n_resamples"):
        SuiteConfig.from_dict({"sets": {"a": {"path": "x.jsonl"}}, "n_resamples": 0})


def test_compare_runs_pairs_per_example_scores(tiny_bert_dir: Path, tiny_data: dict[str, str]) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slimtune.eval.suites import compare_runs

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = SuiteConfig.from_dict(classification_recipe(tiny_bert_dir, tiny_data)["eval"], max_length=16)
    results = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
        with torch.no_grad():
            model.classifier.weight.normal_(0, 1.0)
        results.append(run_suite(config, model, tokenizer, label_map={"neg": 0, "pos": 1}).as_dict())
    diff = compare_runs(results[0], results[1], "test", "accuracy", n_resamples=200)
    expected = results[1]["metrics"]["test"]["accuracy"] - results[0]["metrics"]["test"]["accuracy"]
    assert diff["difference"]["estimate"] == pytest.approx(expected)
    assert 0.0 <= diff["p_value"] <= 1.0
    with pytest.raises(ConfigError, match="per-example"):
        compare_runs(results[0], results[1], "test", "nope")
