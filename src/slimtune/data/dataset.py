"""The data layer's entry point for the trainer: a `DataSpec` in, tokenized examples and a report out."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from slimtune.errors import ConfigError, DataError

from . import corpora
from .collate import MaskMode, PackedCollator, PaddingCollator
from .loaders import FileFormat, TextMode, load_rows
from .packing import PackStrategy, pack_examples, packing_efficiency
from .records import BadRow, LoadResult, Row, Source, log_bad_rows
from .schemas import LabelMap, check_schema_name, validate_rows
from .tokenize import Example, LmOverflow, TokenizeOptions, TruncationSide, tokenize_rows

logger = logging.getLogger("slimtune.data")
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class DataSpec:
    """What to load and how; the recipe's `data:` section maps onto it."""

    path: str | tuple[str, ...]
    """A file, a glob, several files, a folder saved by `datasets`, or "builtin:chatterbot",
    "builtin:rotten_tomatoes", "builtin:hamlet"."""
    schema: str | None = None
    """text | prompt_completion | chat | classification | qa; None detects it from the fields."""
    fields: dict[str, str] | None = None
    """Canonical field -> column in the data, e.g. {"text": "review"}."""
    split: str | None = None
    """Split of a saved DatasetDict; for builtins "train", "test" or (chatterbot) "ood". None: train."""
    max_rows: int | None = None
    """Use at most this many valid rows (the first ones, in file order)."""
    format: FileFormat = "auto"
    """File format; "auto" goes by extension (and a folder is a dataset saved to disk)."""
    text_mode: TextMode = "lines"
    """Plain text files: one document per line, per blank-line separated paragraph, or per file."""
    truncation_side: TruncationSide = "right"
    """Which end of an over-long example is kept: "right" keeps the start, "left" keeps the end."""
    add_eos: bool = True
    """Append EOS to plain text and completions."""
    lm_overflow: LmOverflow = "truncate"
    """Plain text longer than max_length: "truncate" or "chunk"."""
    label_map: dict[str, int] | None = None
    """Classification label -> id; pass the training report's map when building an evaluation split."""
    seed: int = 0
    """Seed of the builtin corpora's train/test split."""
    pack_strategy: PackStrategy = "ffd"
    """With packing: "ffd" (fullest rows) or "sequential" (keeps order)."""

    def __post_init__(self) -> None:
        if self.schema is not None:
            check_schema_name(self.schema)
        if self.max_rows is not None and (not isinstance(self.max_rows, int) or self.max_rows < 1):
            raise ConfigError(f"max_rows must be a positive int or None, got {self.max_rows!r}")
        if not self.path:
            raise ConfigError("DataSpec.path is empty; give a file, a folder or 'builtin:NAME'")
        if isinstance(self.path, list):  # from YAML
            object.__setattr__(self, "path", tuple(str(p) for p in self.path))


@dataclass
class DataReport:
    """What build_dataset did: counts, refused rows, files read with their sha256, provenance, label map."""

    schema: str
    max_length: int
    rows_read: int = 0
    rows_used: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    skipped: list[BadRow] = field(default_factory=list)
    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    truncated: int = 0
    packed: bool = False
    packing_efficiency: float | None = None
    label_map: dict[str, int] | None = None
    files: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None

    def as_dict(self, max_listed: int = 100) -> dict[str, Any]:
        """JSON-ready summary (for metrics and the lineage manifest); bad rows listed up to max_listed."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("bad_rows", "skipped")}
        out["bad_rows"] = [str(b) for b in self.bad_rows[:max_listed]]
        out["skipped"] = [str(b) for b in self.skipped[:max_listed]]
        out["n_bad_rows"], out["n_skipped"] = len(self.bad_rows), len(self.skipped)
        return out


_BUILTIN_SCHEMAS = {"chatterbot": "qa", "rotten_tomatoes": "classification", "hamlet": "text"}


def _builtin_rows(name: str, spec: DataSpec) -> tuple[LoadResult, dict[str, Any], str]:
    if name not in _BUILTIN_SCHEMAS:
        raise ConfigError(f"unknown builtin dataset {name!r}; known: {sorted(_BUILTIN_SCHEMAS)}")
    split = spec.split or "train"
    extra: dict[str, Any] = {"split": split, "seed": spec.seed}
    if name == "hamlet":
        rows, prov = corpora.hamlet()
        parts = {"train": rows}
    elif name == "chatterbot":
        s = corpora.chatterbot_splits(seed=spec.seed)
        parts, prov = {"train": s.train, "test": s.test, "ood": s.ood}, s.provenance
    else:
        s = corpora.rotten_tomatoes(split_seed=spec.seed)
        parts, prov = {"train": s.train, "test": s.test}, s.provenance
        extra["labels"] = dict(corpora.ROTTEN_TOMATOES_LABELS)
    if split not in parts:
        raise ConfigError(f"builtin:{name} has splits {sorted(parts)}, not {split!r}")
    counters: Counter[str] = Counter()
    result = LoadResult()
    for r in parts[split]:
        where = f"{prov.package}/{r['source']}"
        counters[where] += 1
        result.rows.append(Row(r, Source(where, counters[where])))
    return result, {**prov.as_dict(), **extra}, _BUILTIN_SCHEMAS[name]


def _check_files_usable(loaded: LoadResult, valid: Sequence[Row], invalid: Sequence[BadRow]) -> None:
    seen = {r.source.path for r in loaded.rows}
    kept = {r.source.path for r in valid}
    for path in sorted(seen - kept):
        bad = [b for b in invalid if b.path == path]
        first = f" (first: line {bad[0].line}: {bad[0].reason})" if bad else ""
        raise DataError(f"data file {path!r} has no row that fits the schema{first}; "
                        "check schema= and fields=")


def load_and_validate(spec: DataSpec) -> tuple[list[Row], DataReport]:
    """Read and validate the rows a spec names, without tokenizing (for scans and statistics)."""
    provenance = None
    schema = spec.schema
    if isinstance(spec.path, str) and spec.path.startswith(BUILTIN_PREFIX):
        loaded, provenance, builtin_schema = _builtin_rows(spec.path[len(BUILTIN_PREFIX):], spec)
        schema = schema or builtin_schema
    else:
        paths = [spec.path] if isinstance(spec.path, str) else list(spec.path)
        loaded = load_rows(paths, format=spec.format, text_mode=spec.text_mode, split=spec.split)
    result = validate_rows(loaded.rows, schema, spec.fields, spec.label_map)
    log_bad_rows(result.bad_rows, "rows that do not fit the schema")
    _check_files_usable(loaded, result.rows, result.bad_rows)
    rows = result.rows[: spec.max_rows] if spec.max_rows else result.rows
    report = DataReport(
        schema=result.schema, max_length=0, rows_read=len(loaded.rows) + len(loaded.bad_rows),
        rows_used=len(rows), bad_rows=loaded.bad_rows + result.bad_rows, files=dict(loaded.files),
        provenance=provenance, label_map=dict(result.label_map.to_id) if result.label_map else None,
    )
    return rows, report


def build_dataset(
    spec: DataSpec, tokenizer: Any, max_length: int, packing: bool = False
) -> tuple[list[Example], DataReport]:
    """Load, validate, tokenize and (optionally) pack the data a spec names.

    Returns the examples (a list: usable as a torch map-style dataset) and a DataReport. Bad rows are
    logged and reported, not raised; a file without any usable row, or no example at all, is a DataError.
    Use `collator_for(report, tokenizer)` for the matching collator.
    """
    opts = TokenizeOptions(max_length=max_length, truncation_side=spec.truncation_side, add_eos=spec.add_eos,
                           lm_overflow=spec.lm_overflow)
    rows, report = load_and_validate(spec)
    if packing and report.schema == "classification":
        raise ConfigError("packing applies to causal-LM schemas, not classification; set packing=False")
    examples, stats = tokenize_rows(rows, report.schema, tokenizer, opts)
    log_bad_rows(stats.skipped, "examples skipped")
    if not examples:
        raise DataError(f"no usable example in {spec.path!r}: {len(report.bad_rows)} bad rows, "
                        f"{len(stats.skipped)} skipped (max_length={max_length})")
    report.max_length, report.skipped, report.truncated = max_length, stats.skipped, stats.truncated
    report.tokens, report.loss_tokens = stats.tokens, stats.loss_tokens
    if packing:
        examples = pack_examples(examples, max_length, spec.pack_strategy)
        report.packed, report.packing_efficiency = True, packing_efficiency(examples, max_length)
    report.examples = len(examples)
    logger.info("data %s: %d rows -> %d examples (%d tokens, %d bad rows, %d skipped, %d truncated)",
                spec.path, report.rows_used, report.examples, report.tokens, len(report.bad_rows),
                len(report.skipped), report.truncated)
    return examples, report


def collator_for(
    report: DataReport, tokenizer: Any, pad_to_multiple_of: int | None = None, mask: MaskMode = "4d",
    mask_dtype: torch.dtype = torch.float32,
) -> Callable[[Sequence[Example]], dict[str, torch.Tensor]]:
    """The collator that fits a built dataset: packed rows get the block-diagonal mask, others padding."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    if report.packed:
        return PackedCollator(int(pad), pad_to_multiple_of, mask=mask, mask_dtype=mask_dtype)
    return PaddingCollator(int(pad), pad_to_multiple_of)


__all__ = ["BUILTIN_PREFIX", "DataReport", "DataSpec", "LabelMap", "build_dataset", "collator_for",
           "load_and_validate"]
