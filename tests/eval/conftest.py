"""Tiny models saved as local folders (a BERT classifier and a Llama causal LM, random weights from configs)
with a word-level tokenizer over a small vocabulary, and tiny JSONL data made here: sentiment-like
classification (in-distribution and out-of-distribution filler words) and plain text."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "weak"]
FILLER_ID = ["movie", "film", "plot", "actor", "scene", "story", "music", "ending"]
FILLER_OOD = ["phone", "battery", "screen", "price", "camera", "case", "cable", "charger"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
WORDS = SPECIAL + POSITIVE + NEGATIVE + FILLER_ID + FILLER_OOD + ["the", "was", "and", "very", "not"]


def save_tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", eos_token="[EOS]")
    tokenizer.save_pretrained(folder)
    return tokenizer


def sentence(rng: random.Random, filler: list[str]) -> dict[str, Any]:
    label = rng.random() < 0.5
    cue = rng.choice(POSITIVE if label else NEGATIVE)
    words = [rng.choice(filler) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randint(0, len(words)), cue)
    return {"text": " ".join(words), "label": "pos" if label else "neg"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of train / test / ood classification JSONL and a plain-text JSONL."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    text_rows = [{"text": " ".join(rng.choice(WORDS[5:]) for _ in range(rng.randint(6, 14)))} for _ in range(24)]
    return {"train": write_jsonl(root / "train.jsonl", [sentence(rng, FILLER_ID) for _ in range(160)]),
            "test": write_jsonl(root / "test.jsonl", [sentence(rng, FILLER_ID) for _ in range(48)]),
            "ood": write_jsonl(root / "ood.jsonl", [sentence(rng, FILLER_OOD) for _ in range(40)]),
            "text": write_jsonl(root / "text.jsonl", text_rows)}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        vocab_size=len(WORDS), max_position_embeddings=64, pad_token_id=0)
    config.num_labels = 2
    BertForSequenceClassification(config).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(WORDS), max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=4, bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def classification_recipe(model_dir: Path, data: dict[str, str], steps: int = 4) -> dict[str, Any]:
    return {
        "model": {"name": str(model_dir)},
        "data": {"train": {"path": data["train"], "schema": "classification"}, "max_length": 16},
        "train": {"steps": steps, "batch_size": 8, "log_every": 1000},
        "eval": {"sets": {"test": {"path": data["test"], "schema": "classification"},
                          "ood": {"path": data["ood"], "schema": "classification", "kind": "ood"}},
                 "forgetting": False, "n_resamples": 200, "batch_size": 16},
    }


GRID: dict[str, Any] = {
    "methods": {"lora": {"type": "lora"}, "bitfit": {"type": "bitfit", "lr": 5e-3, "train": {"steps": 3}},
                "full": {"type": "full", "lr": 1e-3}},
    "ranks": [2], "targets": ["attention", "all"], "lrs": [5e-3], "seeds": [0, 1], "head": ["classifier"],
    "leave_one_out": {"method": "lora", "targets": True, "layers": ["0"]},
    "latency": {"batch_sizes": [1, 4], "seq_len": 8, "warmup": 1, "repeats": 3},
}
N_CELLS = 14  # lora 2 target groups + bitfit + full + 3 leave-one-out cells, each over 2 seeds
FIRST_RUN = 5


def _snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.parent.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "cells").glob("*/result.json")}


@pytest.fixture(scope="session")
def ablation(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path,
             tiny_data: dict[str, str]) -> dict[str, Any]:
    """The grid run in two parts: FIRST_RUN cells in process, then the rest resumed with 2 worker processes."""
    from slimtune.eval.ablate import run_ablation

    out = tmp_path_factory.mktemp("ablation")
    recipe = classification_recipe(tiny_bert_dir, tiny_data)
    first = run_ablation(recipe, GRID, out, workers=1, max_cells=FIRST_RUN)
    before = _snapshot(out)
    pending = first.pending
    half_written = out / "cells" / pending[0]  # a cell killed mid-way leaves files but no result.json
    half_written.mkdir(parents=True)
    (half_written / "junk.tmp").write_text("partial")
    second = run_ablation(recipe, GRID, out, workers=2)
    return {"out": out, "first": first, "second": second, "before": before, "after": _snapshot(out),
            "pending": pending, "recipe": recipe}


