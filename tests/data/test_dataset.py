"""build_dataset end to end: each schema from files, bad rows in the report, builtins, packing, collators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from slimtune.data import DataSpec, build_dataset, collator_for, load_and_validate
from slimtune.data.collate import PackedCollator, PaddingCollator
from slimtune.data.tokenize import IGNORE_INDEX
from slimtune.errors import ConfigError, DataError

from .conftest import write_jsonl

CHAT = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]}
CASES = {
    "text": [{"text": "the cat sat on the mat"}, {"text": "the dog sat"}],
    "prompt_completion": [{"prompt": "what is two plus four", "completion": "six"},
                          {"prompt": "red or blue", "completion": "blue"}],
    "chat": [CHAT, CHAT],
    "qa": [{"question": "how are you", "answer": "fine thanks"}, {"question": "hi", "answer": "hello"}],
    "classification": [{"text": "great film", "label": "good"}, {"text": "awful movie", "label": "bad"}],
}


@pytest.mark.parametrize("schema", sorted(CASES))
def test_each_schema_from_a_file(tmp_path: Path, toy_tokenizer: Any, schema: str) -> None:
    path = write_jsonl(tmp_path / f"{schema}.jsonl", [*CASES[schema], '{"broken": ', {"unrelated": 1}])
    examples, report = build_dataset(DataSpec(str(path)), toy_tokenizer, max_length=32)
    assert report.schema == ("chat" if schema == "qa" else schema)
    assert len(examples) == report.examples == 2
    assert sorted((b.line, b.reason.split(":")[0]) for b in report.bad_rows)[0] == (3, "invalid JSON")
    assert {b.line for b in report.bad_rows} == {3, 4}
    assert examples[0]["source"] == f"{path}:1"
    assert report.files == {str(path): report.files[str(path)]} and len(report.files[str(path)]) == 64
    if schema == "classification":
        assert report.label_map == {"bad": 0, "good": 1} and [e["label"] for e in examples] == [1, 0]
        batch = collator_for(report, toy_tokenizer)(examples)
        assert batch["labels"].tolist() == [1, 0]
    else:
        counted = sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples)
        assert report.loss_tokens == counted > 0
    json.dumps(report.as_dict())  # the report goes into the lineage manifest as JSON


def test_csv_with_remapped_fields(tmp_path: Path, toy_tokenizer: Any) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("review,verdict\ngreat film,1\nawful movie,0\nbad,\n")
    examples, report = build_dataset(DataSpec(str(path), fields={"text": "review", "label": "verdict"}),
                                     toy_tokenizer, max_length=16)
    assert report.schema == "classification" and [e["label"] for e in examples] == [1, 0]
    assert [(b.line, b.reason) for b in report.bad_rows] == [(4, "label must be a string or an int, got ''")]


def test_wrong_schema_for_a_whole_file_is_an_error(tmp_path: Path, toy_tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "text.jsonl", CASES["text"])
    with pytest.raises(DataError, match=r"text\.jsonl.*no row that fits.*missing field 'prompt'"):
        build_dataset(DataSpec(str(path), schema="prompt_completion"), toy_tokenizer, max_length=16)


def test_max_rows_and_eval_label_map(tmp_path: Path, toy_tokenizer: Any) -> None:
    rows = [{"text": "great film", "label": "good"}, {"text": "awful", "label": "bad"}] * 5
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    examples, report = build_dataset(DataSpec(str(path), max_rows=3), toy_tokenizer, max_length=16)
    assert len(examples) == 3 and report.rows_used == 3 and report.rows_read == 10
    eval_rows = [{"text": "ok", "label": "good"}, {"text": "x", "label": "meh"}]
    eval_path = write_jsonl(tmp_path / "e.jsonl", eval_rows)
    ev, ev_report = build_dataset(DataSpec(str(eval_path), label_map=report.label_map), toy_tokenizer, 16)
    assert [e["label"] for e in ev] == [report.label_map["good"]]  # type: ignore[index]
    assert "'meh' not in the label map" in ev_report.bad_rows[0].reason


def test_packing_end_to_end(tmp_path: Path, toy_tokenizer: Any) -> None:
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    rows = [{"text": " ".join(words[: 2 + i % 8])} for i in range(30)]
    path = write_jsonl(tmp_path / "lm.jsonl", rows)
    plain, _ = build_dataset(DataSpec(str(path)), toy_tokenizer, max_length=24)
    packed, report = build_dataset(DataSpec(str(path)), toy_tokenizer, max_length=24, packing=True)
    assert report.packed and len(packed) < len(plain) and report.packing_efficiency > 0.8  # type: ignore[operator]
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(e["input_ids"]) for e in plain)
    collate = collator_for(report, toy_tokenizer, pad_to_multiple_of=8)
    assert isinstance(collate, PackedCollator)
    batch = collate(packed[:4])
    assert batch["attention_mask"].shape[-1] == batch["input_ids"].shape[1] == 24
    assert isinstance(collator_for(_, toy_tokenizer), PaddingCollator)
    assert torch.utils.data.DataLoader(packed, batch_size=2, collate_fn=collate).__iter__().__next__()


def test_packing_classification_is_refused(tmp_path: Path, toy_tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", CASES["classification"])
    with pytest.raises(ConfigError, match="packing"):
        build_dataset(DataSpec(str(path)), toy_tokenizer, max_length=16, packing=True)


def test_nothing_left_after_truncation_is_an_error(tmp_path: Path, toy_tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "one two three four five", "completion": "six"}])
    with pytest.raises(DataError, match="no usable example"):
        build_dataset(DataSpec(str(path)), toy_tokenizer, max_length=3)


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="'poetry'"):
        DataSpec("x.jsonl", schema="poetry")
    with pytest.raises(ConfigError, match="max_rows"):
        DataSpec("x.jsonl", max_rows=0)
    with pytest.raises(ConfigError, match="unknown builtin"):
        load_and_validate(DataSpec("builtin:nope"))
    with pytest.raises(ConfigError, match="splits"):
        load_and_validate(DataSpec("builtin:rotten_tomatoes", split="ood"))


@pytest.mark.parametrize(("name", "schema", "split"), [
    ("chatterbot", "chat", "train"), ("chatterbot", "chat", "ood"),
    ("rotten_tomatoes", "classification", "test"), ("hamlet", "text", None),
])
def test_builtins_validate_with_provenance(name: str, schema: str, split: str | None) -> None:
    from slimtune.data import corpora

    rows, report = load_and_validate(DataSpec(f"builtin:{name}", split=split))
    assert report.schema == schema and not report.bad_rows and len(rows) == report.rows_used > 0
    assert report.provenance is not None and report.provenance["split"] == (split or "train")
    assert rows[0].source.path.startswith(report.provenance["package"] + "/")
    if name == "chatterbot" and split == "ood":
        assert len(rows) == len(corpora.chatterbot_splits().ood)


def test_spec_path_list_from_yaml(tmp_path: Path, toy_tokenizer: Any) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", CASES["text"])
    b = write_jsonl(tmp_path / "b.jsonl", CASES["text"][:1])
    spec = DataSpec([str(a), str(b)])  # type: ignore[arg-type]
    assert spec.path == (str(a), str(b))
    examples, report = build_dataset(spec, toy_tokenizer, max_length=16)
    assert [e["source"] for e in examples] == [f"{a}:1", f"{a}:2", f"{b}:1"] and len(report.files) == 2
