"""Schema detection, explicit override, field remapping, validation and label maps."""

from __future__ import annotations

from typing import Any

import pytest

from slimtune.data.records import Row, Source
from slimtune.data.schemas import LabelMap, detect_schema, validate_rows
from slimtune.errors import ConfigError, DataError


def rows(*datas: dict[str, Any]) -> list[Row]:
    return [Row(d, Source("mem.jsonl", i)) for i, d in enumerate(datas, start=1)]


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(("data", "schema"), [
    ({"text": "x"}, "text"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    (CHAT, "chat"),
    ({"text": "x", "label": "pos"}, "classification"),
    ({"question": "q", "answer": "a"}, "qa"),
    ({"text": "x", "meta": 1, "id": 7}, "text"),
])
def test_detection(data: dict[str, Any], schema: str) -> None:
    assert detect_schema(rows(data, data)) == schema


def test_detection_follows_the_majority() -> None:
    assert detect_schema(rows({"text": "a"}, {"prompt": "p", "completion": "c"},
                              {"prompt": "q", "completion": "d"})) == "prompt_completion"


def test_undetectable_schema_names_the_fields() -> None:
    with pytest.raises(DataError, match=r"'body'.*fields="):
        detect_schema(rows({"body": "x"}))


def test_field_remap_and_explicit_schema() -> None:
    data = rows({"review": "great film", "sentiment": "fresh", "text": "ignored"})
    result = validate_rows(data, fields={"text": "review", "label": "sentiment"})
    assert result.schema == "classification"
    assert result.rows[0].data == {"text": "great film", "label": 0}
    # an explicit schema wins over detection: the same row read as plain text
    as_text = validate_rows(data, schema="text", fields={"text": "review"})
    assert as_text.schema == "text" and as_text.rows[0].data == {"text": "great film"}
    with pytest.raises(ConfigError, match="'nonsense'"):
        validate_rows(data, schema="nonsense")


def test_qa_becomes_chat() -> None:
    result = validate_rows(rows({"question": "what is two", "answer": "two"}))
    assert result.schema == "chat"
    assert result.rows[0].data["messages"] == [{"role": "user", "content": "what is two"},
                                               {"role": "assistant", "content": "two"}]


def test_invalid_rows_become_bad_rows_with_reasons() -> None:
    data = rows(
        {"prompt": "p", "completion": "c"},
        {"prompt": "p"},
        {"prompt": 3, "completion": "c"},
        {"prompt": "p", "completion": "   "},
        {"prompt": "", "completion": "c2"},
    )
    result = validate_rows(data, schema="prompt_completion")
    assert [r.source.line for r in result.rows] == [1, 5]
    assert [(b.line, b.reason) for b in result.bad_rows] == [
        (2, "missing field 'completion'"),
        (3, "field 'prompt' must be a string, got int"),
        (4, "field 'completion' is empty"),
    ]


@pytest.mark.parametrize(("messages", "reason"), [
    ([], "non-empty list"),
    ("hi", "non-empty list"),
    ([{"role": "user", "content": "hi"}], "no assistant message"),
    ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}], "'robot'"),
    ([{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}], "content must be a string"),
    (["hi", {"role": "assistant", "content": "x"}], "must be an object"),
])
def test_chat_validation(messages: Any, reason: str) -> None:
    result = validate_rows(rows(CHAT, {"messages": messages}), schema="chat")
    assert len(result.rows) == 1
    assert reason in result.bad_rows[0].reason


def test_label_map_from_strings_is_sorted_and_kept() -> None:
    result = validate_rows(rows({"text": "a", "label": "rotten"}, {"text": "b", "label": "fresh"},
                                {"text": "c", "label": "meh"}, {"text": "d", "label": 1.5},
                                {"text": "e", "label": True}))
    assert result.label_map is not None
    assert result.label_map.to_id == {"fresh": 0, "meh": 1, "rotten": 2}
    assert result.label_map.names == ["fresh", "meh", "rotten"]
    assert [r.data["label"] for r in result.rows] == [2, 0, 1]
    assert [b.line for b in result.bad_rows] == [4, 5]


def test_int_and_digit_labels_map_to_themselves() -> None:
    result = validate_rows(rows({"text": "a", "label": 2}, {"text": "b", "label": "0"},
                                {"text": "c", "label": 10}))
    assert [r.data["label"] for r in result.rows] == [2, 0, 10]
    assert LabelMap.build([3, "1"]).to_id == {"1": 1, "3": 3}


def test_given_label_map_refuses_unknown_labels() -> None:
    result = validate_rows(rows({"text": "a", "label": "pos"}, {"text": "b", "label": "neutral"}),
                           label_map={"neg": 0, "pos": 1})
    assert [r.data["label"] for r in result.rows] == [1]
    assert "'neutral' not in the label map" in result.bad_rows[0].reason
