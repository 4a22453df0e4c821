"""Dataset schemas: detect which one a file follows, remap field names, and validate rows into canonical form.

Canonical rows are {"text"} (language modelling), {"prompt", "completion"}, {"messages": [{"role",
"content"}, ...]} (chat), and {"text", "label"} (classification, label an int through a kept label map).
Question/answer rows {"question", "answer"} become two-turn chats.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from slimtune.errors import ConfigError, DataError

from .records import BadRow, Row

SchemaName = Literal["text", "prompt_completion", "chat", "classification", "qa"]
SCHEMAS: tuple[str, ...] = get_args(SchemaName)

#: The fields each schema reads, in canonical names.
SCHEMA_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "chat": ("messages",),
    "classification": ("text", "label"),
    "qa": ("question", "answer"),
}
#: Detection order: the first schema whose fields are all present wins.
_DETECTION_ORDER: tuple[str, ...] = ("chat", "prompt_completion", "qa", "classification", "text")
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
_DETECT_SAMPLE = 100


@dataclass
class LabelMap:
    """Classification labels to class ids; `names[i]` is the label of id i."""

    to_id: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        by_id = {v: k for k, v in self.to_id.items()}
        return [by_id.get(i, "") for i in range(max(self.to_id.values(), default=-1) + 1)]

    def __len__(self) -> int:
        return len(self.to_id)

    @classmethod
    def build(cls, labels: Sequence[Any]) -> LabelMap:
        """Ints (or strings of digits) map to themselves; other labels to their sorted index."""
        keys = {k for k in (_label_key(v) for v in labels) if k is not None}
        if keys and all(k.isdigit() for k in keys):
            return cls({k: int(k) for k in sorted(keys, key=int)})
        return cls({k: i for i, k in enumerate(sorted(keys))})


def _label_key(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    return text or None


@dataclass
class ValidationResult:
    """Rows in canonical form, the rows refused, the schema used and (classification) the label map."""

    rows: list[Row]
    bad_rows: list[BadRow]
    schema: str
    label_map: LabelMap | None = None


def check_schema_name(schema: str) -> str:
    if schema not in SCHEMAS:
        raise ConfigError(f"schema {schema!r} is not one of {list(SCHEMAS)}")
    return schema


def remap(data: Mapping[str, Any], fields: Mapping[str, str] | None) -> dict[str, Any]:
    """Rename source columns to canonical names: fields={"text": "review"} reads "text" from "review"."""
    if not fields:
        return dict(data)
    out = {k: v for k, v in data.items() if k not in fields.values()}
    for canonical, source in fields.items():
        if source in data:
            out[canonical] = data[source]
    return out


def detect_schema(rows: Sequence[Row], fields: Mapping[str, str] | None = None) -> str:
    """The schema most of the first rows fit (after remapping); DataError when none fits."""
    votes: Counter[str] = Counter()
    for row in rows[:_DETECT_SAMPLE]:
        keys = remap(row.data, fields).keys()
        for name in _DETECTION_ORDER:
            if all(f in keys for f in SCHEMA_FIELDS[name]):
                votes[name] += 1
                break
    if not votes:
        seen = sorted({k for row in rows[:_DETECT_SAMPLE] for k in row.data})
        where = str(rows[0].source.path) if rows else "the data"
        raise DataError(f"cannot detect the schema of {where}: its fields are {seen}; expected one of "
                        f"{dict(SCHEMA_FIELDS)}; rename with fields={{canonical: yours}} or pass schema=")
    return votes.most_common(1)[0][0]


def _need_str(data: Mapping[str, Any], name: str, allow_empty: bool = False) -> str:
    if name not in data or data[name] is None:
        raise ValueError(f"missing field {name!r}")
    value = data[name]
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"field {name!r} is empty")
    return value


def _check_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError("field 'messages' must be a non-empty list")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, Mapping):
            raise ValueError(f"messages[{i}] must be an object, got {type(msg).__name__}")
        role, content = msg.get("role"), msg.get("content")
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{i}].role {role!r} is not one of {sorted(CHAT_ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant message: nothing to learn from")
    return out


def canonical(data: Mapping[str, Any], schema: str) -> dict[str, Any]:
    """One remapped row in canonical form; raises ValueError with the reason when it does not fit."""
    if schema == "text":
        return {"text": _need_str(data, "text")}
    if schema == "prompt_completion":
        prompt = _need_str(data, "prompt", allow_empty=True)
        return {"prompt": prompt, "completion": _need_str(data, "completion")}
    if schema == "chat":
        if "messages" not in data:
            raise ValueError("missing field 'messages'")
        return {"messages": _check_messages(data["messages"])}
    if schema == "qa":
        question, answer = _need_str(data, "question"), _need_str(data, "answer")
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    if schema == "classification":
        if "label" not in data or data["label"] is None:
            raise ValueError("missing field 'label'")
        if _label_key(data["label"]) is None:
            raise ValueError(f"label must be a string or an int, got {data['label']!r}")
        return {"text": _need_str(data, "text"), "label": data["label"]}
    raise ConfigError(f"schema {schema!r} is not one of {list(SCHEMAS)}")


def _apply_labels(rows: list[Row], bad: list[BadRow], label_map: LabelMap) -> list[Row]:
    kept = []
    for row in rows:
        key = _label_key(row.data["label"])
        if key not in label_map.to_id:
            reason = f"label {row.data['label']!r} not in the label map {sorted(label_map.to_id)}"
            bad.append(BadRow(row.source.path, row.source.line, reason))
            continue
        kept.append(Row({**row.data, "label": label_map.to_id[key]}, row.source))
    return kept


def validate_rows(
    rows: Sequence[Row],
    schema: str | None = None,
    fields: Mapping[str, str] | None = None,
    label_map: LabelMap | Mapping[str, int] | None = None,
) -> ValidationResult:
    """Remap, detect (unless `schema` is given) and validate rows; rows that do not fit become BadRows.

    Question/answer rows come out as chat rows (schema "chat"). For classification a label map is built
    from these rows unless one is given (e.g. the training split's, for an evaluation split).
    """
    schema = check_schema_name(schema) if schema else detect_schema(rows, fields)
    good: list[Row] = []
    bad: list[BadRow] = []
    for row in rows:
        try:
            good.append(Row(canonical(remap(row.data, fields), schema), row.source))
        except ValueError as exc:
            bad.append(BadRow(row.source.path, row.source.line, str(exc)))
    result = ValidationResult(good, bad, "chat" if schema == "qa" else schema)
    if schema == "classification":
        if label_map is None:
            lm = LabelMap.build([r.data["label"] for r in good])
        else:
            lm = label_map if isinstance(label_map, LabelMap) else LabelMap(dict(label_map))
        result.rows, result.label_map = _apply_labels(good, bad, lm), lm
    return result


__all__ = [
    "CHAT_ROLES", "SCHEMAS", "SCHEMA_FIELDS", "LabelMap", "SchemaName", "ValidationResult", "canonical",
    "check_schema_name", "detect_schema", "remap", "validate_rows",
]
